//! The operator's tools as the real binary runs them against a running server: the CLI
//! subcommands, `check-config`, Prometheus metrics (a separate process, so the counters are
//! this test's alone), and JSON logs.

mod support;
use certline::apikey::ApiKey;
use std::path::Path;
use std::process::{Command, Output};
use support::admin::{Admin, TOKEN, admin_toml};
use support::client::{PATIENCE, call, new_key, request};
use support::server::{Binary, Launch};
use support::wait::{done_or, wait_until};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_certline");

/// Runs `certline ARGS` with the admin URL and token in the environment.
fn cli(admin: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("CERTLINE_ADMIN_URL", format!("http://{admin}"))
        .env("CERTLINE_ADMIN_TOKEN", TOKEN)
        .env_remove("CERTLINE_APIKEY")
        .output()
        .expect("run certline")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// A config with `[admin]` (and `extra`), written under `dir`.
fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("certline.toml");
    std::fs::write(
        &path,
        format!(
            "[claims]\nmax_new_emails_per_address_per_day = 1000\n{extra}{}",
            admin_toml(dir)
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_lists_imports_revokes_and_requeues_through_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let server = Binary::start(&dir.path().join("data"), Some(&config));
    let admin = server.admin.unwrap().to_string();
    let key = new_key(server.addr).await;
    let claim = format!("command claim apikey {key} email ops@example.org");
    assert!(call(server.addr, &claim).await.is_ok());

    // import: a file with comments, blank lines and one bad line.
    let list = dir.path().join("domains.txt");
    std::fs::write(
        &list,
        "# our hosts\nwww.example.org\n\nAPI.example.org.  # trailing comment\nbad..name\n*.shop.example.org:8443\n",
    )
    .unwrap();
    let o = cli(
        &admin,
        &["import", list.to_str().unwrap(), "--apikey", &key],
    );
    assert_eq!(o.status.code(), Some(1), "one bad line: {}", stderr(&o));
    assert_eq!(
        stdout(&o),
        format!(
            "3 added, 0 already registered, 1 invalid (4 lines read from {})\nline 5: bad..name: not a valid domain name\n",
            list.display()
        )
    );
    assert!(
        stderr(&o).contains("import the file again"),
        "{}",
        stderr(&o)
    );
    let o = cli(
        &admin,
        &["import", list.to_str().unwrap(), "--apikey", &key],
    );
    assert!(
        stdout(&o).starts_with("0 added, 3 already registered"),
        "{}",
        stdout(&o)
    );

    // domains: table, JSON, CSV, filters.
    let o = cli(&admin, &["domains"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("DOMAIN") && lines[0].contains("SECTIGO"),
        "{table}"
    );
    assert!(lines[1].starts_with("api.example.org "), "{table}");
    assert!(
        lines[1].contains(" off ") && lines[1].contains(" unconfirmed "),
        "{table}"
    );
    assert!(
        table.ends_with("3 domain(s) listed; Sectigo bridge off\n"),
        "{table}"
    );
    let o = cli(
        &admin,
        &["domains", "--json", "--suffix", "shop.example.org"],
    );
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "JSON Lines, one domain: {}", stdout(&o));
    assert_eq!(lines[0]["domain"], "shop.example.org:8443");
    let o = cli(&admin, &["domains", "--csv"]);
    let csv = stdout(&o);
    assert!(
        csv.starts_with(
            "DOMAIN,SECTIGO,KEY,ID,DCV,DCV_DOMAIN,DCV_EXPIRES,NEXT_ATTEMPT,NEEDS_ACTION\r\n"
        ),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 4);
    let o = cli(&admin, &["domains", "--needs-action"]);
    assert!(
        stdout(&o).ends_with("0 domain(s) need action; Sectigo bridge off\n"),
        "{}",
        stdout(&o)
    );

    // keys.
    let id = ApiKey::parse(&key).unwrap().hash().id();
    let o = cli(&admin, &["keys"]);
    let keys = stdout(&o);
    let row = keys
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{keys}"));
    assert!(
        row.contains("ops@example.org") && row.trim_end().ends_with(" 3"),
        "{row}"
    );

    // requeue without a bridge says why.
    let o = cli(&admin, &["requeue", "www.example.org"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("409") && stderr(&o).contains("bridge is off"),
        "{}",
        stderr(&o)
    );

    // revoke: effective on the line protocol at once.
    let o = cli(&admin, &["revoke", &id[..10]]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        format!("key {id} revoked; its requests are refused from now on\n")
    );
    assert_eq!(
        request(
            server.addr,
            &format!("command add apikey {key} domain x.example.org\n")
        )
        .await,
        "status error 403 api key revoked\n"
    );
    let o = cli(&admin, &["revoke", "zz"]);
    assert!(stderr(&o).contains("400"), "{}", stderr(&o));

    // The URL and token can come from the config file instead.
    let o = Command::new(BIN)
        .args([
            "keys",
            "--json",
            "--admin-url",
            &format!("http://{admin}"),
            "--config",
        ])
        .arg(&config)
        .env_remove("CERTLINE_ADMIN_URL")
        .env_remove("CERTLINE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&id));

    // Errors say what to do.
    let o = Command::new(BIN)
        .args(["keys"])
        .env("CERTLINE_ADMIN_URL", format!("http://{admin}"))
        .env("CERTLINE_ADMIN_TOKEN", "wrong-token-wrong-token")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("set CERTLINE_ADMIN_TOKEN"),
        "{}",
        stderr(&o)
    );
    let o = Command::new(BIN)
        .args(["domains"])
        .env_remove("CERTLINE_ADMIN_URL")
        .env_remove("CERTLINE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(stderr(&o).contains("give --admin-url"), "{}", stderr(&o));
    drop(server);
    let o = cli(&admin, &["domains"]);
    assert!(
        stderr(&o).contains("cannot reach the admin API"),
        "{}",
        stderr(&o)
    );
}

/// A strict reading of the Prometheus text format (0.0.4): every line is a comment
/// (`# HELP`/`# TYPE`), or `name{labels} value` with a float value. Returns the samples.
fn strict_samples(text: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            assert!(
                rest.starts_with("HELP ") || rest.starts_with("TYPE "),
                "bad comment {line:?}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unclosed labels in {line:?}");
            for pair in series[name_end + 1..series.len() - 1].split(',') {
                let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{line:?}"));
                assert!(
                    !k.is_empty() && v.starts_with('"') && v.ends_with('"'),
                    "{line:?}"
                );
            }
        }
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        out.push((series.to_owned(), value));
    }
    out
}

async fn scrape(admin: &Admin) -> (String, prometheus_parse::Scrape) {
    let (status, text) = admin.get("/metrics").await;
    assert_eq!(status, 200, "{text}");
    strict_samples(&text);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    (text, scrape)
}

/// The value of the sample `name` with exactly `labels`, 0 when absent.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map_or(0.0, |s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name}: unexpected {other:?}"),
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_prometheus_text_and_move_with_the_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[rate_limit]\napikey_per_minute = 1\napikey_burst = 2\n",
    );
    // On the embedded store whatever CERTLINE_TEST_STORE says: the test reads the group
    // commit's histogram (`certline_flush_seconds`), which PostgreSQL (its own commit per
    // write) does not have.
    let server = Launch::new(&dir.path().join("data"))
        .config(&config)
        .sled()
        .start();
    let admin = Admin::new(server.admin.unwrap());
    let (text, before) = scrape(&admin).await;
    assert!(
        text.contains("# TYPE certline_open_connections gauge"),
        "{text}"
    );
    assert_eq!(value(&before, "certline_open_connections", &[]), 0.0);
    assert_eq!(value(&before, "certline_outbox_depth", &[]), 0.0);
    assert_eq!(
        value(&before, "certline_domains", &[("state", "synced")]),
        0.0
    );
    assert_eq!(value(&before, "certline_bridge_paused", &[]), 0.0);
    let pings = |s: &prometheus_parse::Scrape| {
        value(
            s,
            "certline_requests_total",
            &[("command", "ping"), ("code", "200")],
        )
    };
    assert_eq!(pings(&before), 0.0);

    for _ in 0..7 {
        assert!(call(server.addr, "command ping").await.is_ok());
    }
    assert_eq!(
        request(server.addr, "command fly\n").await,
        "status error 404 unknown command fly\n"
    );
    for _ in 0..2 {
        new_key(server.addr).await;
    }
    assert_eq!(
        request(server.addr, "command apikey\n").await,
        "status error 429 too many requests\n"
    );
    // Three connections held open.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let after = wait_until(PATIENCE, "3 open connections", || async {
        let (_, s) = scrape(&admin).await;
        let open = value(&s, "certline_open_connections", &[]);
        done_or(open == 3.0, open).map(|()| s)
    })
    .await;
    assert_eq!(pings(&after), 7.0);
    assert_eq!(
        value(
            &after,
            "certline_requests_total",
            &[("command", "none"), ("code", "404")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "certline_requests_total",
            &[("command", "apikey"), ("code", "429")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "certline_rate_limited_total",
            &[("command", "apikey")]
        ),
        1.0
    );
    // Two acknowledged keys took at least one group-commit round.
    let flushes = after
        .samples
        .iter()
        .find(|s| s.metric == "certline_flush_seconds_count")
        .map(|s| match s.value {
            prometheus_parse::Value::Untyped(v) | prometheus_parse::Value::Counter(v) => v,
            _ => panic!(),
        })
        .expect("flush histogram count");
    assert!(flushes >= 1.0, "{flushes}");
    let (text, _) = scrape(&admin).await;
    assert!(
        text.contains("# TYPE certline_flush_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("certline_flush_seconds_bucket{le=\"+Inf\"}"),
        "{text}"
    );
    drop(held);
    wait_until(PATIENCE, "every connection closed", || async {
        let open = value(&scrape(&admin).await.1, "certline_open_connections", &[]);
        done_or(open == 0.0, open)
    })
    .await;
}

#[test]
fn a_config_typo_is_one_clean_message_even_with_rust_backtrace_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[limits]\nmax_line_byte = 10\n").unwrap();
    for command in ["check-config", "serve"] {
        let mut c = Command::new(BIN);
        match command {
            "serve" => c.args(["serve", "--config"]),
            _ => c.arg(command),
        };
        let o = c.arg(&path).env("RUST_BACKTRACE", "1").output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{command}");
        let err = stderr(&o);
        assert!(err.starts_with("error: "), "{command}: {err}");
        assert_eq!(
            err.matches("unknown field `max_line_byte`").count(),
            1,
            "{command}: the TOML error is printed once: {err}"
        );
        assert!(!err.contains("Caused by"), "{command}: {err}");
        assert!(!err.contains("stack backtrace"), "{command}: {err}");
    }
}

#[test]
fn check_config_validates_the_new_sections_and_their_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let body = "[admin]\ntoken_env = \"CERTLINE_TEST_ADMIN_TOKEN\"\npublic_url = \"https://certline.example.org\"\n\
                [smtp]\nhost = \"smtp.example.org\"\nusername = \"certline\"\npassword_file = \"/nonexistent/pw\"\nfrom = \"certline@example.org\"\n\
                [claims]\nmax_unconfirmed_keys_per_email = 20\n";
    std::fs::write(&path, body).unwrap();
    let run = |token: Option<&str>| {
        let mut c = Command::new(BIN);
        c.arg("check-config").arg(&path);
        match token {
            Some(t) => c.env("CERTLINE_TEST_ADMIN_TOKEN", t),
            None => c.env_remove("CERTLINE_TEST_ADMIN_TOKEN"),
        };
        c.output().unwrap()
    };
    let o = run(None);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    assert!(text.contains("admin: listen = 127.0.0.1:10080, public_url = https://certline.example.org/, token from environment variable CERTLINE_TEST_ADMIN_TOKEN"), "{text}");
    assert!(text.contains("admin token: PROBLEM: admin.token_env: environment variable CERTLINE_TEST_ADMIN_TOKEN is not set"), "{text}");
    assert!(
        text.contains("smtp: smtp.example.org:587 tls = Starttls"),
        "{text}"
    );
    assert!(
        text.contains("smtp password: PROBLEM: smtp.password_file: cannot read /nonexistent/pw"),
        "{text}"
    );
    assert!(
        text.contains(
            "max_unconfirmed_keys_per_email = 20, max_new_emails_per_address_per_day = 5"
        ),
        "{text}"
    );
    assert!(
        text.ends_with("2 problem(s); fix them before `certline serve`\n"),
        "{text}"
    );
    std::fs::write(dir.path().join("pw"), "smtp-Secret-1\n").unwrap();
    std::fs::write(
        &path,
        body.replace(
            "/nonexistent/pw",
            &dir.path().join("pw").display().to_string(),
        ),
    )
    .unwrap();
    let o = run(Some("a-long-admin-Token-42"));
    let text = stdout(&o);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains("admin token: ok") && text.contains("smtp password: ok"),
        "{text}"
    );
    assert!(
        !text.contains("a-long-admin-Token-42") && !text.contains("smtp-Secret-1"),
        "{text}"
    );
    // [smtp] without [admin] cannot serve its links: refused with the reason.
    std::fs::write(&path, "[smtp]\nhost = \"m\"\nfrom = \"c@example.org\"\n").unwrap();
    let o = run(None);
    assert!(!o.status.success());
    assert!(
        stdout(&o).contains("PROBLEM: [smtp] needs an [admin] section"),
        "{}",
        stdout(&o)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[log]\nformat = \"json\"\n");
    let log = dir.path().join("certline.log");
    let server = Binary::start_logged(&dir.path().join("data"), Some(&config), "info", Some(&log));
    let key = new_key(server.addr).await;
    assert!(
        call(
            server.addr,
            &format!("command claim apikey {key} email ops@example.org")
        )
        .await
        .is_ok()
    );
    let text = wait_until(PATIENCE, "a confirm link in the log", || async {
        let text = std::fs::read_to_string(&log).unwrap();
        done_or(text.contains("/link/confirm/"), text.clone()).map(|()| text)
    })
    .await;
    server.terminate();
    let text = std::fs::read_to_string(&log).unwrap_or(text);
    let mut events = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        events.push(v);
    }
    let audit = events
        .iter()
        .find(|e| e["fields"]["event"] == "claim-apikey")
        .expect("the claim's audit event");
    assert_eq!(
        audit["fields"]["key"],
        ApiKey::parse(&key).unwrap().hash().id()
    );
    assert!(
        events
            .iter()
            .any(|e| e["fields"]["message"] == "store closed; stopped")
    );
    assert!(!text.contains(&key), "the key itself is never logged");
}
