//! Reload on SIGHUP (issue 19): the configuration file and the secrets it names are read
//! again; new Sectigo credentials resume a paused bridge at once, with every domain the 401
//! parked; a policy change applies at the next bridge step; limits apply to new connections;
//! a rotated admin token works at once; settings that need a restart are reported and kept;
//! a reload that fails validation (a value, a combination, a bridge key such as
//! `allow_insecure_http`) keeps the running configuration and logs why. No connection is
//! dropped by any of it.
//!
//! The real binary runs in a child process and gets real signals.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::admin::{Admin, admin_toml};
use support::bridge_setup::sectigo_section;
use support::client::{call, new_key, read_reply};
use support::scm_sim::{self, ScmSim};
use support::server::Binary;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(30);

/// The server's log, as written so far.
fn log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Sends SIGHUP and waits until the log shows one more reload outcome than before.
async fn reload(server: &Binary, log_file: &Path) -> String {
    let outcomes = |text: &str| {
        text.matches("configuration reloaded").count() + text.matches("reload failed").count()
    };
    let before = outcomes(&log(log_file));
    server.sighup();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = log(log_file);
        if outcomes(&text) > before {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no reload outcome logged:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends one request on an open connection and returns the reply.
async fn on(stream: &mut TcpStream, line: &str) -> String {
    stream
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    String::from_utf8(read_reply(stream).await).unwrap()
}

fn base_toml(dir: &Path) -> String {
    format!(
        "[durability]\nmode = \"relaxed\"\n[rate_limit]\napikey_per_minute = 100000\napikey_burst = 100000\n{}",
        admin_toml(dir)
    )
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Polls the inventory until `check` accepts the entry of `domain` (and the listing).
async fn wait_domain(
    admin: &Admin,
    domain: &str,
    check: impl Fn(&serde_json::Value, &serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let page = admin.json(&format!("/api/domains?suffix={domain}")).await;
        let entry = page["domains"][0].clone();
        if check(&page, &entry) {
            return entry;
        }
        assert!(Instant::now() < deadline, "{domain}: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    password: PathBuf,
    log: PathBuf,
    server: Binary,
    admin: Admin,
}

/// certline with `[admin]` and `[sectigo]` (the simulator, with `settings`), the Sectigo
/// password file holding `password`.
fn start(sim: &ScmSim, settings: &str, password: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("sectigo-password");
    write(&password_file, password);
    let config = dir.path().join("certline.toml");
    write(
        &config,
        &format!(
            "{}{}",
            base_toml(dir.path()),
            sectigo_section(sim, &password_file, settings)
        ),
    );
    let log = dir.path().join("certline.log");
    let server = Binary::start_logged(&dir.path().join("data"), Some(&config), "info", Some(&log));
    let admin = Admin::new(server.admin.expect("admin listener"));
    Setup {
        _dir: dir,
        config,
        password: password_file,
        log,
        server,
        admin,
    }
}

/// The policy settings; the bridge's 401 probe is an hour away, so only a reload can resume
/// it within the test.
const POLICY: &str = "allowed_suffixes = [\"example.edu\"]\ncreate_missing = false\nrequire_confirmed_key = false\nunauthorized_retry_secs = 3600";

/// The domains of the credential-rotation test.
const PARKED: [&str; 4] = [
    "www.example.edu",
    "a.example.edu",
    "b.example.edu",
    "c.example.edu",
];

/// Polls the inventory under `suffix` until `check` accepts every entry of `domains`.
async fn wait_all(
    admin: &Admin,
    suffix: &str,
    domains: &[&str],
    check: impl Fn(&serde_json::Value, &serde_json::Value) -> bool,
) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let page = admin.json(&format!("/api/domains?suffix={suffix}")).await;
        let entries = page["domains"].as_array().cloned().unwrap_or_default();
        let all = domains.iter().all(|d| {
            entries
                .iter()
                .find(|e| e["domain"] == *d)
                .is_some_and(|e| check(&page, e))
        });
        if all {
            return;
        }
        assert!(Instant::now() < deadline, "{domains:?}: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn new_credentials_by_sighup_resume_every_parked_domain_at_once_without_dropping_a_connection()
 {
    let sim = ScmSim::start().await;
    for d in PARKED {
        sim.add_domain(d);
    }
    // Probes every second while the password is wrong, so each domain in turn meets the 401
    // and is parked by it (not only the first one).
    let probing = POLICY.replace(
        "unauthorized_retry_secs = 3600",
        "unauthorized_retry_secs = 1",
    );
    let s = start(&sim, &probing, "a-wrong-password");
    let key = new_key(s.server.addr).await;
    let mut held = TcpStream::connect(s.server.addr).await.unwrap();
    for d in PARKED {
        let add = format!("command add apikey {key} domain {d}");
        let reply = on(&mut held, &add).await;
        assert!(
            reply.starts_with(&format!("data {d}\nstatus ok 200")),
            "{reply}"
        );
    }
    // Sectigo answers 401 to the wrong password: the bridge pauses, and every domain has
    // been refused by it (each carries the 401 as its error).
    wait_all(&s.admin, "example.edu", &PARKED, |page, d| {
        page["bridge"] == "paused" && !d["error"].is_null() && d["sectigo"] != "synced"
    })
    .await;
    assert_eq!(sim.domain_count(), PARKED.len(), "nothing created");

    // First a probe interval of an hour, the password still wrong: the reload's probe meets
    // the 401 again and the bridge stays paused, now for an hour, so from here on only a
    // reload can resume it within the test.
    let text = std::fs::read_to_string(&s.config).unwrap();
    write(
        &s.config,
        &text.replace(
            "unauthorized_retry_secs = 1",
            "unauthorized_retry_secs = 3600",
        ),
    );
    let text = reload(&s.server, &s.log).await;
    assert!(text.contains("configuration reloaded"), "{text}");
    wait_all(&s.admin, "example.edu", &PARKED, |page, d| {
        page["bridge"] == "paused" && !d["error"].is_null()
    })
    .await;
    // Wait for that probe: a domain it parked is next due in about an hour. From then on
    // the bridge sleeps for the hour, and no probe of the old one-second rhythm is pending.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let page = s.admin.json("/api/domains?suffix=example.edu").await;
        let in_an_hour = page["domains"].as_array().unwrap().iter().any(|d| {
            d["next_attempt"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t.timestamp() > chrono::Utc::now().timestamp() + 1800)
        });
        if in_an_hour {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no probe after the reload: {page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The right password: the reload must release every parked domain behind one probe,
    // not just the one that probes.
    write(&s.password, scm_sim::PASSWORD);
    let text = reload(&s.server, &s.log).await;
    assert!(text.contains("configuration reloaded"), "{text}");
    wait_all(&s.admin, "example.edu", &PARKED, |page, d| {
        page["bridge"] == "on" && d["sectigo"] == "synced" && d["error"].is_null()
    })
    .await;
    for d in PARKED {
        let entry = wait_domain(&s.admin, d, |_, e| e["sectigo"] == "synced").await;
        assert_eq!(entry["id"], sim.domain_id(d).unwrap(), "{d}");
    }

    // The connection opened before the reload is still served.
    let status = format!("command status apikey {key} domain www.example.edu");
    let reply = on(&mut held, &status).await;
    assert!(reply.contains("status ok 200"), "{reply}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_change_by_sighup_applies_at_the_next_bridge_step() {
    let sim = ScmSim::start().await;
    sim.add_domain("www.example.edu");
    let narrow = POLICY.replace("example.edu", "example.org");
    let s = start(&sim, &narrow, scm_sim::PASSWORD);
    let key = new_key(s.server.addr).await;
    let add = format!("command add apikey {key} domain www.example.edu");
    assert!(call(s.server.addr, &add).await.is_ok());
    wait_domain(&s.admin, "www.example.edu", |_, d| {
        d["sectigo"] == "not_forwarded"
    })
    .await;

    let text = std::fs::read_to_string(&s.config).unwrap();
    write(&s.config, &text.replace("example.org", "example.edu"));
    reload(&s.server, &s.log).await;
    wait_domain(&s.admin, "www.example.edu", |_, d| d["sectigo"] == "synced").await;

    // A reload is validated like a start: without allow_insecure_http the simulator's
    // http:// URL is refused, and the running bridge goes on as it was.
    let text = std::fs::read_to_string(&s.config).unwrap();
    assert!(text.contains("allow_insecure_http = true\n"));
    write(&s.config, &text.replace("allow_insecure_http = true\n", ""));
    let log = reload(&s.server, &s.log).await;
    assert!(
        log.contains("reload failed") && log.contains("sectigo.base_url"),
        "{log}"
    );
    sim.add_domain("mail.example.edu");
    let add = format!("command add apikey {key} domain mail.example.edu");
    assert!(call(s.server.addr, &add).await.is_ok());
    wait_domain(&s.admin, "mail.example.edu", |_, d| {
        d["sectigo"] == "synced"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_apply_to_new_connections_and_a_failed_reload_keeps_the_running_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("certline.toml");
    let base = base_toml(dir.path());
    write(&config, &format!("{base}[limits]\nmax_line_bytes = 64\n"));
    let log_file = dir.path().join("certline.log");
    let server = Binary::start_logged(
        &dir.path().join("data"),
        Some(&config),
        "info",
        Some(&log_file),
    );
    let admin = Admin::new(server.admin.unwrap());
    let key = new_key(server.addr).await;
    let long = format!(
        "command add apikey {key} domain {}.example.org",
        "a".repeat(60)
    );
    let mut old = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(on(&mut old, "command ping").await, "status ok 200 pong\n");

    // A file that does not validate: nothing changes, and the log says why.
    write(&config, &format!("{base}[limits]\nmax_line_bytes = 1\n"));
    let text = reload(&server, &log_file).await;
    assert!(
        text.contains("reload failed") && text.contains("limits.max_line_bytes"),
        "{text}"
    );
    assert_eq!(on(&mut old, "command ping").await, "status ok 200 pong\n");
    let mut fresh = TcpStream::connect(server.addr).await.unwrap();
    assert!(
        on(&mut fresh, &long).await.contains("413"),
        "still 64 bytes"
    );

    // A valid change: the new line cap serves connections opened after the reload; the one
    // open before keeps its cap. A restart-only change is reported and kept.
    let token_file = dir.path().join("admin-token");
    write(&token_file, "a-rotated-admin-token-0123456789\n");
    write(
        &config,
        &format!("worker_threads = 3\n{base}[limits]\nmax_line_bytes = 1024\n"),
    );
    let text = reload(&server, &log_file).await;
    assert!(text.contains("configuration reloaded"), "{text}");
    assert!(
        text.contains("worker_threads changed in the configuration but needs a restart"),
        "{text}"
    );
    let mut fresh = TcpStream::connect(server.addr).await.unwrap();
    let reply = on(&mut fresh, &long).await;
    assert!(reply.contains("status ok 200"), "{reply}");
    let reply = on(&mut old, &long).await;
    assert!(
        reply.contains("413"),
        "the old connection keeps its cap: {reply}"
    );

    // The admin token was read again.
    assert_eq!(
        admin.get("/api/keys").await.0,
        401,
        "the old token is refused"
    );
    let rotated = admin
        .http
        .get(format!("{}/api/keys", admin.base))
        .bearer_auth("a-rotated-admin-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200);
}
