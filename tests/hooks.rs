//! The certbot hook (`hooks/certline-certbot-hook`) and the first-boot script
//! (`hooks/certline-register`) run by real bash against the real certline server.
//!
//! Each test builds a temporary certbot tree (non-default config and logs dirs, as certbot's
//! `--config-dir`/`--logs-dir` make them) from `tests/fixtures/hooks/`: renewal confs, live
//! certificates and logs written by certbot 2.1 (Debian) and 5.8 (PyPI) against Pebble; see
//! `tests/fixtures/hooks/README.md`. The scripts run with a cleared environment and a PATH of
//! only bash, coreutils and grep (no curl, no openssl, no logger), and what they registered is
//! read back from certline with `command list apikey K`.

mod support;

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::scripts::*;

/// Generous bound for a script that talks to a live server on loopback.
const RUN_LIMIT: Duration = Duration::from_secs(30);

const LINEAGES: &[&str] = &["a.example.org", "c.example.org", "x1.example.org"];
const ALL_X: &[&str] = &[
    "x1.example.org",
    "x2.example.org",
    "x3.example.org",
    "x4.example.org",
];

/// A temporary `/etc/letsencrypt`-like tree with the hook installed in renewal-hooks/deploy
/// and renewal-hooks/post.
struct Tree {
    root: tempfile::TempDir,
    config: PathBuf,
    logs: PathBuf,
    bin: PathBuf,
    deploy_hook: PathBuf,
    post_hook: PathBuf,
}

impl Tree {
    /// `fixture` is a directory under tests/fixtures/hooks holding `renewal/` and `logs/`.
    fn new(fixture: &str, port: u16) -> Tree {
        let root = tempfile::tempdir().expect("temp root");
        let r = root.path().to_str().expect("utf-8 temp path").to_owned();
        let config = root.path().join("le/config");
        let logs = root.path().join("le/logs");
        let fixtures = repo().join("tests/fixtures/hooks");
        let source = fixtures.join(fixture);

        fs::create_dir_all(config.join("renewal")).unwrap();
        fs::create_dir_all(&logs).unwrap();
        let subst = |text: String| text.replace("@ROOT@", &r);
        let mut accounts = Vec::new();
        for entry in fs::read_dir(source.join("renewal")).unwrap() {
            let entry = entry.unwrap();
            let text = subst(fs::read_to_string(entry.path()).unwrap());
            let value = |key: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("{key} = ")))
                    .map(str::to_owned)
            };
            if let (Some(account), Some(server)) = (value("account"), value("server")) {
                accounts.push((account, server));
            }
            fs::write(config.join("renewal").join(entry.file_name()), text).unwrap();
        }
        for entry in fs::read_dir(source.join("logs")).unwrap() {
            let entry = entry.unwrap();
            let text = subst(fs::read_to_string(entry.path()).unwrap());
            fs::write(logs.join(entry.file_name()), text).unwrap();
        }
        // live/X/cert.pem -> ../../archive/X/cert2.pem, as certbot leaves it after a renewal.
        for name in LINEAGES {
            let archive = config.join("archive").join(name);
            let live = config.join("live").join(name);
            fs::create_dir_all(&archive).unwrap();
            fs::create_dir_all(&live).unwrap();
            fs::copy(
                fixtures.join("certs").join(format!("{name}.pem")),
                archive.join("cert2.pem"),
            )
            .unwrap();
            for file in ["cert", "fullchain"] {
                symlink(
                    format!("../../archive/{name}/cert2.pem"),
                    live.join(format!("{file}.pem")),
                )
                .unwrap();
            }
        }
        // certbot keeps no e-mail here: regr.json has an empty body.
        for (account, server) in accounts {
            let dir = server
                .trim_start_matches("https://")
                .trim_end_matches('/')
                .to_owned();
            let dir = config.join("accounts").join(dir).join(account);
            fs::create_dir_all(&dir).unwrap();
            fs::write(
                dir.join("regr.json"),
                format!(r#"{{"body": {{}}, "uri": "{server}/my-account/1"}}"#),
            )
            .unwrap();
            fs::write(
                dir.join("meta.json"),
                r#"{"creation_dt": "2026-11-23T18:37:46Z", "creation_host": "localhost"}"#,
            )
            .unwrap();
        }
        let hooks = config.join("renewal-hooks");
        fs::create_dir_all(hooks.join("pre")).unwrap();
        let deploy_hook = install_hook(&hooks.join("deploy"));
        let post_hook = install_hook(&hooks.join("post"));
        fs::write(
            hooks.join("certline-hook.conf"),
            format!("# certline server\nHOST=127.0.0.1\nPORT={port}\n"),
        )
        .unwrap();
        let bin = minimal_path(root.path());
        Tree {
            root,
            config,
            logs,
            bin,
            deploy_hook,
            post_hook,
        }
    }

    fn hooks_dir(&self) -> PathBuf {
        self.config.join("renewal-hooks")
    }

    fn key_file(&self) -> PathBuf {
        self.hooks_dir().join("certline_apikey")
    }

    fn key(&self) -> String {
        read_trimmed(&self.key_file())
    }

    fn lineage(&self, name: &str) -> String {
        self.config.join("live").join(name).display().to_string()
    }

    fn append_setting(&self, line: &str) {
        let conf = self.hooks_dir().join("certline-hook.conf");
        let mut text = fs::read_to_string(&conf).unwrap();
        text.push_str(line);
        text.push('\n');
        fs::write(conf, text).unwrap();
    }

    /// Runs `hook` with only PATH and the given variables, as certbot would (its cwd is
    /// certbot's, here the temp root).
    fn run(&self, hook: &Path, vars: &[(&str, &str)]) -> Finished {
        let mut cmd = Command::new(hook);
        cmd.env_clear()
            .env("PATH", &self.bin)
            .current_dir(self.root.path());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let done = run_bounded(cmd, RUN_LIMIT);
        assert!(
            done.status.success(),
            "the hook must always exit 0; {}",
            done.output()
        );
        done
    }
}

#[test]
fn deploy_hook_registers_renewed_domains_with_a_private_claimed_key() {
    let server = Server::start();
    let tree = Tree::new("certbot-2.1", server.port);
    let lineage = tree.lineage("a.example.org");
    let done = tree.run(
        &tree.deploy_hook,
        &[
            ("RENEWED_DOMAINS", "a.example.org b.example.org"),
            ("RENEWED_LINEAGE", &lineage),
        ],
    );
    assert!(
        done.stderr.is_empty(),
        "no errors expected; {}",
        done.output()
    );

    let key_file = tree.key_file();
    assert_eq!(mode_of(&key_file), 0o600, "the key file must be private");
    let key = tree.key();
    assert_eq!(
        server.domains(&key),
        strings(&["a.example.org", "b.example.org"])
    );
    // certbot 2.1 stores no e-mail; the hook found the account's address in the log of the
    // run that registered it.
    assert_claimed_by(&server, &key, "ops@example.org");
}

#[test]
fn rerunning_the_hook_reuses_its_key_and_changes_nothing() {
    let server = Server::start();
    let tree = Tree::new("certbot-2.1", server.port);
    let lineage = tree.lineage("a.example.org");
    let vars = [
        ("RENEWED_DOMAINS", "a.example.org b.example.org"),
        ("RENEWED_LINEAGE", lineage.as_str()),
    ];
    tree.run(&tree.deploy_hook, &vars);
    let key = tree.key();
    let again = tree.run(&tree.deploy_hook, &vars);
    assert!(again.stderr.is_empty(), "{}", again.output());
    assert_eq!(tree.key(), key, "the key must be requested only once");
    assert!(
        again.stdout.contains("domain already registered"),
        "{}",
        again.output()
    );
    assert_eq!(
        server.domains(&key),
        strings(&["a.example.org", "b.example.org"])
    );

    // The post copy shares the key kept in renewal-hooks/.
    let x1 = tree.lineage("x1.example.org");
    tree.run(
        &tree.deploy_hook,
        &[
            ("RENEWED_DOMAINS", &ALL_X.join(" ")),
            ("RENEWED_LINEAGE", &x1),
        ],
    );
    assert_eq!(tree.key(), key);
    assert_eq!(server.domains(&key).len(), 6);
}

#[test]
fn post_hook_on_certbot_2_reads_only_the_last_run_of_an_accumulated_log() {
    let server = Server::start();
    let tree = Tree::new("certbot-2.1", server.port);
    // Without openssl and without a webroot_map, only the certificate itself (decoded by the
    // hook with base64 and od) can tell x2-x4: the log shows "x1.example.org and 3 more".
    let x1_conf = tree.config.join("renewal/x1.example.org.conf");
    let conf = fs::read_to_string(&x1_conf).unwrap();
    let without_map = conf.split("[[webroot_map]]").next().unwrap().to_owned();
    fs::write(&x1_conf, without_map).unwrap();
    // certbot 2.x leaves the last deploy hook's variables behind; they must not be trusted.
    let leftover = tree.lineage("c.example.org");
    let done = tree.run(
        &tree.post_hook,
        &[
            ("RENEWED_DOMAINS", "leftover.example.net"),
            ("RENEWED_LINEAGE", &leftover),
        ],
    );
    assert!(done.stderr.is_empty(), "{}", done.output());
    let key = tree.key();
    // The last run renewed a.example.org (+b) and x1.example.org (4 names, logged as "and 3
    // more domains"); c.example.org failed in it and was only issued in an earlier run.
    let mut expected = strings(&["a.example.org", "b.example.org"]);
    expected.extend(strings(ALL_X));
    assert_eq!(sorted(server.domains(&key)), expected);
    assert_claimed_by(&server, &key, "ops@example.org");
}

#[test]
fn post_hook_without_readable_certificates_falls_back_to_log_and_renewal_conf() {
    let server = Server::start();
    let tree = Tree::new("certbot-2.1", server.port);
    for name in LINEAGES {
        fs::remove_file(tree.config.join("archive").join(name).join("cert2.pem")).unwrap();
    }
    tree.run(&tree.post_hook, &[]);
    let key = tree.key();
    // "a.example.org and b.example.org" is complete in the log; "x1.example.org and 3 more
    // domains" is completed from the webroot_map of x1's renewal conf.
    let mut expected = strings(&["a.example.org", "b.example.org"]);
    expected.extend(strings(ALL_X));
    assert_eq!(sorted(server.domains(&key)), expected);
}

#[test]
fn post_hook_on_certbot_5_uses_renewed_domains_and_a_rotated_log() {
    let server = Server::start();
    let tree = Tree::new("certbot-5.8", server.port);
    let leftover = tree.lineage("x1.example.org");
    let renewed = format!("a.example.org b.example.org {}", ALL_X.join(" "));
    let done = tree.run(
        &tree.post_hook,
        &[
            ("RENEWED_DOMAINS", renewed.as_str()),
            ("FAILED_DOMAINS", "c.example.org"),
            ("RENEWED_LINEAGE", leftover.as_str()),
        ],
    );
    assert!(done.stderr.is_empty(), "{}", done.output());
    let key = tree.key();
    let mut expected = strings(&["a.example.org", "b.example.org"]);
    expected.extend(strings(ALL_X));
    assert_eq!(sorted(server.domains(&key)), expected);
    // The registering run is in letsencrypt.log.4 (max-log-backups rotates every run).
    assert_claimed_by(&server, &key, "ops@example.org");
}

#[test]
fn post_hook_parses_a_certbot_5_log_when_the_environment_says_nothing() {
    let server = Server::start();
    let tree = Tree::new("certbot-5.8", server.port);
    // certbot 5 logs "x1.example.org and 3 more" (no "domains").
    let summary = fs::read_to_string(tree.logs.join("letsencrypt.log")).unwrap();
    assert!(summary.contains("Renewing an existing certificate for x1.example.org and 3 more"));
    tree.run(&tree.post_hook, &[]);
    let mut expected = strings(&["a.example.org", "b.example.org"]);
    expected.extend(strings(ALL_X));
    assert_eq!(sorted(server.domains(&tree.key())), expected);
}

#[test]
fn post_hook_registers_nothing_after_a_dry_run() {
    let server = Server::start();
    let tree = Tree::new("certbot-2.1", server.port);
    fs::copy(
        repo().join("tests/fixtures/hooks/certbot-2.1-dry-run/logs/letsencrypt.log"),
        tree.logs.join("letsencrypt.log"),
    )
    .unwrap();
    let done = tree.run(&tree.post_hook, &[]);
    assert!(done.stdout.contains("dry run"), "{}", done.output());
    assert!(
        !tree.key_file().exists(),
        "no key should be requested for a dry run"
    );
}

#[test]
fn configured_email_wins_over_the_certbot_account() {
    let server = Server::start();
    let tree = Tree::new("certbot-2.1", server.port);
    tree.append_setting("EMAIL='certs@example.net'   # the team's address");
    tree.run(&tree.deploy_hook, &[("RENEWED_DOMAINS", "c.example.org")]);
    let key = tree.key();
    assert_claimed_by(&server, &key, "certs@example.net");
    assert_eq!(server.domains(&key), strings(&["c.example.org"]));
}

#[test]
fn email_comes_from_a_file_then_from_a_generated_address() {
    let server = Server::start();
    let tree = Tree::new("certbot-2.1", server.port);
    // No log of the registering run left, no certbot to ask.
    fs::remove_file(tree.logs.join("letsencrypt.log")).unwrap();
    fs::write(
        tree.hooks_dir().join("certline_email"),
        "owner@example.com\n",
    )
    .unwrap();
    tree.run(&tree.deploy_hook, &[("RENEWED_DOMAINS", "c.example.org")]);
    assert_claimed_by(&server, &tree.key(), "owner@example.com");

    let server = Server::start();
    let tree = Tree::new("certbot-2.1", server.port);
    fs::remove_file(tree.logs.join("letsencrypt.log")).unwrap();
    tree.run(&tree.deploy_hook, &[("RENEWED_DOMAINS", "c.example.org")]);
    let generated = read_trimmed(&tree.hooks_dir().join("certline_email"));
    assert!(
        generated.starts_with("certline-") && generated.ends_with("@c.example.org"),
        "generated address: {generated}"
    );
    assert_claimed_by(&server, &tree.key(), &generated);
}

#[test]
fn unreachable_server_is_reported_and_the_hook_exits_at_once() {
    let port = closed_port();
    let tree = Tree::new("certbot-2.1", port);
    let lineage = tree.lineage("a.example.org");
    let done = tree.run(
        &tree.deploy_hook,
        &[
            ("RENEWED_DOMAINS", "a.example.org b.example.org"),
            ("RENEWED_LINEAGE", &lineage),
        ],
    );
    eprintln!(
        "hook with the server down (refused) took {:?}",
        done.elapsed
    );
    assert!(
        done.elapsed < Duration::from_secs(5),
        "took {:?}",
        done.elapsed
    );
    assert!(done.stderr.contains("unreachable"), "{}", done.output());
    assert!(done.stderr.contains("a.example.org"), "{}", done.output());
    assert!(!tree.key_file().exists());
}

#[test]
fn silent_server_is_given_up_on_within_the_timeout() {
    // Accepts connections (the kernel does, from the backlog) but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let tree = Tree::new("certbot-2.1", port);
    let done = tree.run(&tree.deploy_hook, &[("RENEWED_DOMAINS", "a.example.org")]);
    eprintln!("hook with a silent server took {:?}", done.elapsed);
    assert!(
        done.elapsed < Duration::from_secs(5),
        "took {:?}",
        done.elapsed
    );
    assert!(done.stderr.contains("unreachable"), "{}", done.output());
    drop(silent);
}

#[test]
fn server_errors_are_reported_with_the_servers_own_text() {
    let server = Server::start();
    let tree = Tree::new("certbot-2.1", server.port);
    // A well-formed key this server never issued, recorded as claimed: `add` gets a 401.
    let bogus = "00000000-0000-0000-0000-000000000000";
    fs::write(tree.key_file(), format!("{bogus}\n")).unwrap();
    fs::write(
        tree.hooks_dir().join("certline_apikey.claimed"),
        "ops@example.org\n",
    )
    .unwrap();
    let done = tree.run(
        &tree.deploy_hook,
        &[("RENEWED_DOMAINS", "a.example.org b.example.org")],
    );
    assert!(
        done.stderr.contains("status error 401 unknown api key"),
        "{}",
        done.output()
    );
    assert_eq!(
        tree.key(),
        bogus,
        "the hook must not replace the operator's key"
    );

    // A malformed e-mail setting: the server's 422 text is reported, and the domains are
    // still registered under the (new) key.
    let server = Server::start();
    let tree = Tree::new("certbot-2.1", server.port);
    tree.append_setting("EMAIL=not-an-address");
    let done = tree.run(&tree.deploy_hook, &[("RENEWED_DOMAINS", "a.example.org")]);
    assert!(
        done.stderr.contains("status error 422 invalid email"),
        "{}",
        done.output()
    );
    assert_eq!(server.domains(&tree.key()), strings(&["a.example.org"]));
}

// ---------------------------------------------------------------------------------------------
// certline-register

fn register_command(bin: &Path, state: &Path, port: u16) -> Command {
    let mut cmd = Command::new(register_script());
    cmd.env_clear()
        .env("PATH", bin)
        .env("CERTLINE_HOST", "127.0.0.1")
        .env("CERTLINE_PORT", port.to_string())
        .env("CERTLINE_STATE_DIR", state);
    cmd
}

#[test]
fn first_boot_script_waits_for_a_server_started_late() {
    let dir = tempfile::tempdir().unwrap();
    let bin = minimal_path(dir.path());
    let state = dir.path().join("state");
    let port = closed_port();

    let mut cmd = register_command(&bin, &state, port);
    cmd.env("CERTLINE_RETRIES", "12")
        .env("CERTLINE_BACKOFF", "0.2")
        .env("CERTLINE_BACKOFF_MAX", "1")
        .env("CERTLINE_EMAIL", "ops@example.org")
        .args(["--strict", "web.example.org", "api.example.org"]);
    let script = std::thread::spawn(move || run_bounded(cmd, Duration::from_secs(60)));
    std::thread::sleep(Duration::from_millis(1500));
    let server = Server::start_on(&format!("127.0.0.1:{port}"));
    let done = script.join().unwrap();
    assert!(done.status.success(), "{}", done.output());
    assert!(
        done.stderr.contains("not reachable"),
        "it should have waited; {}",
        done.output()
    );

    let key_file = state.join("apikey");
    assert_eq!(mode_of(&key_file), 0o600);
    let key = read_trimmed(&key_file);
    assert_eq!(
        server.domains(&key),
        strings(&["api.example.org", "web.example.org"])
    );
    assert_claimed_by(&server, &key, "ops@example.org");

    // Every boot runs it again: same key, nothing new, exit 0; domains from the environment.
    let mut again = register_command(&bin, &state, port);
    again
        .env("CERTLINE_DOMAINS", "web.example.org,api.example.org")
        .env("CERTLINE_EMAIL", "ops@example.org")
        .arg("--strict");
    let done = run_bounded(again, RUN_LIMIT);
    assert!(done.status.success(), "{}", done.output());
    assert_eq!(read_trimmed(&key_file), key);
    assert_eq!(done.stderr.matches("domain already registered").count(), 2);
    assert_eq!(server.domains(&key).len(), 2);
}

#[test]
fn first_boot_script_fails_only_when_strict() {
    let dir = tempfile::tempdir().unwrap();
    let bin = minimal_path(dir.path());
    let state = dir.path().join("state");
    let port = closed_port();
    for strict in [false, true] {
        let mut cmd = register_command(&bin, &state, port);
        cmd.env("CERTLINE_RETRIES", "3")
            .env("CERTLINE_BACKOFF", "0.1")
            .env("CERTLINE_DOMAINS", "web.example.org");
        if strict {
            cmd.env("CERTLINE_STRICT", "yes");
        }
        let done = run_bounded(cmd, RUN_LIMIT);
        assert_eq!(done.status.success(), !strict, "{}", done.output());
        assert!(
            done.stderr.contains("unreachable after 3 attempts"),
            "{}",
            done.output()
        );
    }
    assert!(!state.join("apikey").exists());
}
