//! End to end with real certbot: Pebble (an ACME test CA) on 127.0.0.1, certbot issuing and
//! renewing certificates with `--webroot`, and `hooks/certline-certbot-hook` installed in
//! certbot's `renewal-hooks/` registering the domains with the real certline server.
//!
//! Needs `certbot`, `pebble` and `openssl` (Debian packages; `.ci/install-e2e-deps` installs
//! them), so the tests are ignored by default. Run them with
//! `cargo test --test certbot_e2e -- --include-ignored` (or `.ci/e2e`).
//!
//! The certbot 5.x variant uses the PyPI certbot in the venv that `.ci/install-e2e-deps`
//! creates (`/opt/certline-e2e/certbot5`, or `CERTLINE_E2E_CERTBOT5=/path/to/certbot`); without
//! it, that test says why and passes without doing anything.

mod support;

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::scripts::*;
use support::wait::wait_until_blocking;

/// certbot's own polling makes a run take a few seconds; this only catches a hang.
const CERTBOT_LIMIT: Duration = Duration::from_secs(240);

const EMAIL: &str = "ops@example.org";
const AB: &[&str] = &["a.example.org", "b.example.org"];
const XS: &[&str] = &["x1.example.org", "x2.example.org", "x3.example.org"];

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn require(tool: &str) -> PathBuf {
    for dir in ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin"] {
        let path = Path::new(dir).join(tool);
        if path.exists() {
            return path;
        }
    }
    panic!("{tool} is not installed; run .ci/install-e2e-deps");
}

/// Pebble on loopback, killed by its pid when dropped.
struct Pebble {
    child: Child,
    acme_port: u16,
    ca_bundle: PathBuf,
}

impl Pebble {
    fn start(dir: &Path) -> Pebble {
        let openssl = require("openssl");
        let pebble = require("pebble");
        // A CA and a listener certificate for Pebble's HTTPS (Debian ships no test certs).
        let ca = dir.join("ca.pem");
        let run = |args: &[&str]| {
            let done = run_bounded(
                {
                    let mut c = Command::new(&openssl);
                    c.args(args).current_dir(dir);
                    c
                },
                Duration::from_secs(60),
            );
            assert!(done.status.success(), "openssl {args:?}: {}", done.output());
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "7",
            "-subj",
            "/CN=certline e2e CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
             extendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "7",
            "-extfile",
            "server.ext",
        ]);

        let acme_port = free_port();
        let mgmt_port = free_port();
        let config = dir.join("pebble-config.json");
        fs::write(
            &config,
            format!(
                r#"{{"pebble": {{"listenAddress": "127.0.0.1:{acme_port}",
  "managementListenAddress": "127.0.0.1:{mgmt_port}",
  "certificate": "{cert}", "privateKey": "{key}",
  "httpPort": 5002, "tlsPort": 5001, "ocspResponderURL": "",
  "externalAccountBindingRequired": false}}}}"#,
                cert = dir.join("server.pem").display(),
                key = dir.join("server.key").display(),
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.join("pebble.log")).unwrap();
        let child = Command::new(pebble)
            .arg("-config")
            .arg(&config)
            .env("PEBBLE_VA_ALWAYS_VALID", "1")
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start pebble");
        let pebble = Pebble {
            child,
            acme_port,
            ca_bundle: ca,
        };
        wait_until_blocking(Duration::from_secs(20), "pebble listening", || {
            TcpStream::connect(("127.0.0.1", acme_port)).map_err(|e| {
                (
                    e,
                    fs::read_to_string(dir.join("pebble.log")).unwrap_or_default(),
                )
            })
        });
        pebble
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One certbot installation under test, with its own config/work/logs dirs.
struct Certbot {
    bin: PathBuf,
    root: PathBuf,
    config: PathBuf,
    max_log_backups: &'static str,
    ca_bundle: PathBuf,
}

impl Certbot {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .arg("--non-interactive")
            .arg("--config-dir")
            .arg(&self.config)
            .arg("--work-dir")
            .arg(self.root.join("le/work"))
            .arg("--logs-dir")
            .arg(self.root.join("le/logs"))
            .args(["--max-log-backups", self.max_log_backups])
            // certbot passes its environment on to the hooks; nothing of the test runner's
            // certline settings may leak into them.
            .env_remove("CERTLINE_HOST")
            .env_remove("CERTLINE_PORT")
            .env_remove("CERTLINE_EMAIL")
            .env("REQUESTS_CA_BUNDLE", &self.ca_bundle)
            .current_dir(&self.root);
        cmd
    }

    fn run(&self, args: &[&str]) -> Finished {
        let done = run_bounded(self.command(args), CERTBOT_LIMIT);
        assert!(
            done.status.success(),
            "certbot {args:?} failed: {}",
            done.output()
        );
        done
    }

    fn certonly(&self, pebble: &Pebble, domains: &[&str], register: bool) {
        let webroot = self.root.join("webroot");
        fs::create_dir_all(&webroot).unwrap();
        let directory = pebble.directory();
        let webroot = webroot.display().to_string();
        let mut args = vec!["certonly", "--server", &directory];
        if register {
            args.extend(["--agree-tos", "-m", EMAIL, "--no-eff-email"]);
        }
        args.extend(["--webroot", "-w", &webroot]);
        for d in domains {
            args.extend(["-d", d]);
        }
        self.run(&args);
    }

    fn renew(&self) -> Finished {
        self.run(&["renew", "--force-renewal", "--no-random-sleep-on-renew"])
    }

    fn hooks(&self) -> PathBuf {
        self.config.join("renewal-hooks")
    }

    fn key(&self) -> String {
        read_trimmed(&self.hooks().join("certline_apikey"))
    }

    /// Points the hooks at `server` and forgets any key of an earlier server.
    fn use_server(&self, server: &Server) {
        fs::create_dir_all(self.hooks()).unwrap();
        fs::write(
            self.hooks().join("certline-hook.conf"),
            format!("HOST=127.0.0.1\nPORT={}\n", server.port),
        )
        .unwrap();
        for f in ["certline_apikey", "certline_apikey.claimed"] {
            let _ = fs::remove_file(self.hooks().join(f));
        }
    }

    fn set_hook(&self, kind: &str, installed: bool) {
        let dir = self.hooks().join(kind);
        if installed {
            install_hook(&dir);
        } else {
            let _ = fs::remove_file(dir.join("certline-certbot-hook"));
        }
    }
}

fn all_domains() -> Vec<String> {
    let mut v = strings(AB);
    v.extend(strings(XS));
    v
}

fn assert_hook_quiet(done: &Finished) {
    // certbot echoes a hook's stderr as "Hook '...' ran with error output"; the hook writes
    // there only when something went wrong (bash's own errors included).
    let text = done.output();
    assert!(
        !text.contains("ran with error output") && !text.contains("certline-certbot-hook: error"),
        "the hook reported an error: {text}"
    );
}

fn exercise(bin: PathBuf, max_log_backups: &'static str) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let pebble = Pebble::start(&root);
    let certbot = Certbot {
        bin,
        config: root.join("le/config"),
        root,
        max_log_backups,
        ca_bundle: pebble.ca_bundle.clone(),
    };
    let version = certbot.run(&["--version"]);
    eprintln!(
        "certbot under test: {}",
        (version.stdout + &version.stderr).trim()
    );

    // Directory hooks are not run by certonly, so install them first as an operator would.
    certbot.certonly(&pebble, AB, true);
    certbot.certonly(&pebble, XS, false);

    // 1. Deploy hook only: once per lineage, with RENEWED_DOMAINS.
    let first = Server::start();
    certbot.use_server(&first);
    certbot.set_hook("deploy", true);
    assert_hook_quiet(&certbot.renew());
    let key = certbot.key();
    assert_eq!(sorted(first.domains(&key)), all_domains());
    assert_eq!(
        first.request(&format!("command claim apikey {key} email {EMAIL}")),
        "status ok 200 api key already claimed\n"
    );

    // 2. Post hook only, on a fresh server, with no log of the registering run left: the
    //    domains come from the run's log and the certificates (certbot 2.x) or from
    //    RENEWED_DOMAINS (5.x); the e-mail from `certbot show_account` against Pebble.
    let second = Server::start();
    certbot.use_server(&second);
    certbot.set_hook("deploy", false);
    certbot.set_hook("post", true);
    for entry in fs::read_dir(certbot.root.join("le/logs")).unwrap() {
        fs::remove_file(entry.unwrap().path()).unwrap();
    }
    assert_hook_quiet(&certbot.renew());
    let key = certbot.key();
    assert_eq!(sorted(second.domains(&key)), all_domains());
    assert_eq!(
        second.request(&format!("command claim apikey {key} email {EMAIL}")),
        "status ok 200 api key already claimed\n"
    );

    // 3. Both, as INSTALL.md suggests for mixed fleets: same key, nothing new, claim intact.
    certbot.set_hook("deploy", true);
    let done = certbot.renew();
    assert_hook_quiet(&done);
    assert_eq!(certbot.key(), key, "the key must be kept across runs");
    assert_eq!(sorted(second.domains(&key)), all_domains());
    assert_eq!(
        second.request(&format!("command claim apikey {key} email {EMAIL}")),
        "status ok 200 api key already claimed\n"
    );
    drop(pebble);
}

#[test]
#[ignore = "needs certbot and pebble; .ci/run installs them"]
fn debian_certbot_renewal_registers_domains_through_the_hook() {
    // Debian's cli.ini keeps one accumulating log (max-log-backups = 0); so does this test.
    exercise(require("certbot"), "0");
}

#[test]
#[ignore = "needs certbot 5 (a PyPI venv) and pebble; .ci/e2e installs them and runs this with --include-ignored"]
fn pypi_certbot_5_renewal_registers_domains_through_the_hook() {
    let bin = std::env::var_os("CERTLINE_E2E_CERTBOT5")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/certline-e2e/certbot5/bin/certbot"));
    // Run (with --include-ignored) means required: a missing certbot fails, never skips.
    assert!(
        bin.exists(),
        "no certbot 5.x at {}: run .ci/install-e2e-deps (it creates that venv) or set CERTLINE_E2E_CERTBOT5",
        bin.display()
    );
    // certbot's own default rotates the log at every run.
    exercise(bin, "10");
}
