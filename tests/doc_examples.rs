//! The configuration examples in README.md and hooks/INSTALL.md are executable, so an example
//! can never drift into something the server rejects, misreads, or parks for ever.
//!
//! Every ```` ```toml ```` block (and README.md's blocks put together, which the README says
//! make one file) is
//!
//! 1. run through the real `certline check-config`: it passes, or it fails only with
//!    problems README.md quotes verbatim ("Settings that cannot work together");
//! 2. started with the real `certline serve`, and then either refused at start with those
//!    same messages, or used the way a host uses certline (`apikey`, `claim`, `add` over the
//!    line protocol) until the domain is in the Sectigo simulator, or `status` says the
//!    bridge is off. A domain waiting for its key's confirmation is confirmed the way the
//!    example provides: the mailed link with `[smtp]`, `certline confirm` without.
//!
//! To run on a test machine, the examples are changed only where they name the outside
//! world: the listeners go to `127.0.0.1:0`, Sectigo is the simulator (which is told to
//! accept the example's login, customer URI or client id), the SMTP relay is the test's sink
//! (plain, no login, since the sink takes none), each `*_env` secret is set in the server's
//! environment and each `*_file` secret points at a file the test writes. Nothing else is
//! touched: policy, timers, limits and confirmation settings are the example's own.

mod support;
use certline::apikey::ApiKey;
use certline::app::requirements::Rule;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use support::client::call;
use support::scm_sim::ScmSim;
use support::server::{Binary, Launch};
use support::smtp_sink::SmtpSink;
use support::wait::wait_until;
use toml::{Table, Value};

const BIN: &str = env!("CARGO_BIN_EXE_certline");

/// Every secret an example names gets this value (long enough for an admin token).
const SECRET: &str = "doc-example-secret-0123456789";

/// The domain a host registers; README.md's policy examples allow `example.edu`.
const DOMAIN: &str = "www.example.edu";

/// A configuration example: where it is, and its text.
struct Example {
    name: String,
    text: String,
}

fn doc(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The ```` ```toml ```` blocks of a Markdown file, named by file and line.
fn toml_blocks(path: &str) -> Vec<Example> {
    let text = doc(path);
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        match &mut open {
            None if line.trim_start() == "```toml" => open = Some((i + 1, String::new())),
            None => {}
            Some((start, body)) if line.trim_start() == "```" => {
                blocks.push(Example {
                    name: format!("{path}:{start}"),
                    text: std::mem::take(body),
                });
                open = None;
            }
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    assert!(open.is_none(), "{path}: a ```toml block is never closed");
    blocks
}

/// README.md's blocks one by one, README.md's blocks as the one file they are parts of, and
/// hooks/INSTALL.md's blocks.
fn examples() -> Vec<Example> {
    let readme = toml_blocks("README.md");
    assert!(
        readme.len() >= 4,
        "README.md has only {} toml blocks",
        readme.len()
    );
    let together = Example {
        name: "README.md, every block as one file".into(),
        text: readme
            .iter()
            .map(|e| e.text.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
    };
    // A block that only adds a sub-table to a section shown earlier (`[sectigo.acme]` after
    // the `[sectigo]` block) is a part of that section: check it together with it.
    let readme = with_their_sections(readme);
    let install = toml_blocks("hooks/INSTALL.md");
    assert!(
        !install.is_empty(),
        "hooks/INSTALL.md shows a certline.toml"
    );
    readme
        .into_iter()
        .chain([together])
        .chain(install)
        .collect()
}

/// Is every top-level entry of `text` a section made only of sub-tables (`[a.b]` without
/// `[a]`'s own keys)? Then `text` is a fragment of section `a`, not a file of its own.
fn fragment_of(text: &str) -> Option<String> {
    let table: Table = text.parse().ok()?;
    let mut sections = table.iter().map(|(name, value)| match value {
        Value::Table(t) if !t.is_empty() && t.values().all(Value::is_table) => Some(name.clone()),
        _ => None,
    });
    let first = sections.next()??;
    (table.len() == 1).then_some(first)
}

/// Each fragment block joined to the first earlier block that holds its section's own keys.
fn with_their_sections(blocks: Vec<Example>) -> Vec<Example> {
    let mut out: Vec<Example> = Vec::with_capacity(blocks.len());
    for block in blocks {
        let Some(section) = fragment_of(&block.text) else {
            out.push(block);
            continue;
        };
        let host = out
            .iter()
            .find(|e| {
                e.text
                    .parse::<Table>()
                    .ok()
                    .and_then(|t| t.get(&section).cloned())
                    .is_some_and(|v| {
                        v.as_table()
                            .is_some_and(|t| !t.values().all(Value::is_table))
                    })
            })
            .unwrap_or_else(|| {
                panic!(
                    "{}: [{section}.*] with no [{section}] block before it",
                    block.name
                )
            });
        out.push(Example {
            name: format!("{} (with its [{section}] from {})", block.name, host.name),
            text: format!("{}\n{}", host.text, block.text),
        });
    }
    out
}

/// The refusal messages README.md quotes.
fn documented_refusals() -> Vec<&'static str> {
    let readme = doc("README.md");
    Rule::ALL
        .iter()
        .map(|r| r.message())
        .filter(|m| readme.contains(&format!("- `{m}`")))
        .collect()
}

/// The names of every `*_env` key (the secrets to set), anywhere in the table.
fn secret_envs(table: &Table, out: &mut Vec<String>) {
    for (key, value) in table {
        match value {
            Value::Table(t) => secret_envs(t, out),
            Value::String(name) if key.ends_with("_env") => out.push(name.clone()),
            _ => {}
        }
    }
}

/// Points every `*_file` secret at `file`.
fn secret_files(table: &mut Table, file: &Path) {
    for (key, value) in table.iter_mut() {
        match value {
            Value::Table(t) => secret_files(t, file),
            Value::String(_) if key.ends_with("_file") => {
                *value = Value::String(file.display().to_string());
            }
            _ => {}
        }
    }
}

/// The test machine's stand-ins for the outside world.
struct World {
    sim: ScmSim,
    sink: SmtpSink,
    dir: tempfile::TempDir,
}

impl World {
    async fn new() -> Self {
        Self {
            sim: ScmSim::start().await,
            sink: SmtpSink::start().await,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// `example` with its secrets provided and, when `for_serve`, its addresses pointed at
    /// the test's listeners, simulator and sink. Returns the file and the environment.
    fn materialise(
        &self,
        example: &Example,
        n: usize,
        for_serve: bool,
    ) -> (PathBuf, Vec<(String, String)>) {
        let mut table: Table = toml::from_str(&example.text)
            .unwrap_or_else(|e| panic!("{} is not TOML: {e}", example.name));
        let secret_file = self.dir.path().join("secret");
        std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
        secret_files(&mut table, &secret_file);
        let mut envs = Vec::new();
        secret_envs(&table, &mut envs);
        if for_serve {
            self.redirect(&mut table);
        }
        let path = self.dir.path().join(format!("example-{n}.toml"));
        std::fs::write(&path, toml::to_string(&table).unwrap()).unwrap();
        let envs = envs.into_iter().map(|e| (e, SECRET.to_owned())).collect();
        (path, envs)
    }

    fn redirect(&self, table: &mut Table) {
        let loopback = || Value::String("127.0.0.1:0".into());
        if let Some(Value::Table(admin)) = table.get_mut("admin") {
            admin.insert("listen".into(), loopback());
        }
        if let Some(Value::Table(smtp)) = table.get_mut("smtp") {
            smtp.insert("host".into(), Value::String("127.0.0.1".into()));
            smtp.insert(
                "port".into(),
                Value::Integer(i64::from(self.sink.addr.port())),
            );
            smtp.insert("tls".into(), Value::String("none".into()));
            for login in ["username", "password_env", "password_file"] {
                smtp.remove(login);
            }
        }
        if let Some(Value::Table(sectigo)) = table.get_mut("sectigo") {
            sectigo.insert("base_url".into(), Value::String(self.sim.api_url()));
            // The simulator speaks plain HTTP, which certline refuses unless allowed.
            sectigo.insert("allow_insecure_http".into(), Value::Boolean(true));
            let Some(Value::Table(auth)) = sectigo.get_mut("auth") else {
                panic!("[sectigo] without [sectigo.auth]");
            };
            let text = |k: &str| auth.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            match text("mode").as_str() {
                "headers" => {
                    self.sim
                        .set_header_credentials(&text("login"), SECRET, &text("customer_uri"));
                }
                "oauth2" => {
                    self.sim.set_oauth_client(&text("client_id"), SECRET);
                    auth.insert("token_url".into(), Value::String(self.sim.token_url()));
                }
                other => panic!("unknown sectigo.auth.mode {other:?}"),
            }
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// The `PROBLEM:` messages of a check-config report.
fn problems(report: &str) -> Vec<String> {
    report
        .lines()
        .filter_map(|l| l.trim().strip_prefix("PROBLEM: ").map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_toml_example_passes_check_config_or_fails_only_as_documented() {
    let world = World::new().await;
    let documented = documented_refusals();
    let mut refused = 0;
    for (n, example) in examples().iter().enumerate() {
        let (file, envs) = world.materialise(example, n, false);
        let o: Output = Command::new(BIN)
            .arg("check-config")
            .arg(&file)
            .envs(envs)
            .output()
            .unwrap();
        let report = text(&o.stdout);
        assert!(
            o.stderr.is_empty(),
            "{}: check-config failed: {}",
            example.name,
            text(&o.stderr)
        );
        let problems = problems(&report);
        if o.status.success() {
            assert!(problems.is_empty(), "{}: {report}", example.name);
            assert!(report.contains("requirements: ok"), "{report}");
        } else {
            refused += 1;
            assert!(!problems.is_empty(), "{}: {report}", example.name);
            for p in &problems {
                assert!(
                    documented.contains(&p.as_str()),
                    "{}: a problem README.md does not document: {p}\n{report}",
                    example.name
                );
            }
        }
    }
    // README.md's [smtp] and [sectigo] blocks (the latter also with its [sectigo.acme]
    // fragment) each need [admin]; all else passes.
    assert_eq!(
        refused, 3,
        "the refused examples changed: update this count"
    );
}

/// Starts `certline serve` on `file`; `Err(stderr)` when it exits instead of listening.
fn serve(
    world: &World,
    n: usize,
    file: &Path,
    envs: &[(String, String)],
) -> Result<Binary, String> {
    let stderr = world.dir.path().join(format!("serve-{n}.stderr"));
    let data = world.dir.path().join(format!("data-{n}"));
    Launch::new(&data)
        .config(file)
        .envs(envs)
        .logged("warn", Some(&stderr))
        .try_start()
        .map_err(|status| {
            assert!(!status.success(), "exited 0 without listening");
            std::fs::read_to_string(&stderr).unwrap()
        })
}

async fn status(addr: SocketAddr, key: &str) -> String {
    call(
        addr,
        &format!("command status domain {DOMAIN} apikey {key}"),
    )
    .await
    .data
    .expect("status has a data line")
}

/// Confirms `key` the way the example provides: the mailed link when it has `[smtp]` (the
/// link is under `admin.public_url`, followed at the listener's real address), else
/// `certline confirm`.
async fn confirm(world: &World, served: &Binary, public_url: Option<&str>, key: &str) {
    let admin = served
        .admin
        .expect("waiting for a confirmation needs [admin]");
    let id = ApiKey::parse(key).unwrap().hash().id();
    let Some(public_url) = public_url else {
        let o = Command::new(BIN)
            .args(["confirm", &id])
            .env("CERTLINE_ADMIN_URL", format!("http://{admin}"))
            .env("CERTLINE_ADMIN_TOKEN", SECRET)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        return;
    };
    let mail = world
        .sink
        .wait_for(1, support::client::PATIENCE)
        .await
        .remove(0);
    assert_eq!(mail.to, ["ops@example.edu"]);
    let base = format!("{}/", public_url.trim_end_matches('/'));
    let link = mail
        .links()
        .into_iter()
        .find(|l| l.contains("/link/confirm/"))
        .unwrap_or_else(|| panic!("no confirm link: {}", mail.data));
    let path = link
        .strip_prefix(&base)
        .unwrap_or_else(|| panic!("{link} is not under admin.public_url {base}"));
    let local = format!("http://{admin}/{path}");
    let http = reqwest::Client::new();
    assert_eq!(http.get(&local).send().await.unwrap().status(), 200);
    let pressed = http.post(&local).send().await.unwrap();
    assert_eq!(pressed.status(), 200, "{}", pressed.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_configuration_example_brings_a_domain_to_sectigo_or_is_refused_at_start() {
    let documented = documented_refusals();
    let (mut refused, mut synced, mut off) = (0, 0, 0);
    for (n, example) in examples().iter().enumerate() {
        // A fresh simulator and sink per example: counts and mails are this example's.
        let world = World::new().await;
        let (file, envs) = world.materialise(example, n, true);
        let served = match serve(&world, n, &file, &envs) {
            Ok(served) => served,
            Err(stderr) => {
                let said: Vec<_> = documented.iter().filter(|m| stderr.contains(*m)).collect();
                assert!(
                    !said.is_empty(),
                    "{}: refused without a documented message:\n{stderr}",
                    example.name
                );
                refused += 1;
                continue;
            }
        };
        let table: Table = example.text.parse().unwrap();
        let bridged = table.contains_key("sectigo");
        let public_url = table
            .get("smtp")
            .and(table.get("admin"))
            .and_then(|a| a.get("public_url"))
            .and_then(Value::as_str);

        // A host registers, as README.md's bash does.
        let key = call(served.addr, "command apikey").await.data.unwrap();
        let claim = format!("command claim apikey {key} email ops@example.edu");
        assert!(call(served.addr, &claim).await.is_ok(), "{}", example.name);
        let add = format!("command add domain {DOMAIN} apikey {key}");
        assert!(call(served.addr, &add).await.is_ok(), "{}", example.name);

        if !bridged {
            let data = status(served.addr, &key).await;
            assert!(data.ends_with(" sectigo=off"), "{}: {data}", example.name);
            off += 1;
            continue;
        }
        // The domain reaches Sectigo, or says it waits for its key's confirmation.
        let why = format!("{}: {DOMAIN} reaching Sectigo", example.name);
        let limit = Duration::from_secs(90);
        let reached = |want: &'static [&'static str]| {
            let (addr, key) = (served.addr, key.clone());
            wait_until(limit, &why, move || {
                let key = key.clone();
                async move {
                    let data = status(addr, &key).await;
                    if want.iter().any(|w| data.contains(w)) {
                        Ok(data)
                    } else {
                        Err(data)
                    }
                }
            })
        };
        let data = reached(&[" sectigo=synced", " waiting=key_confirmation"]).await;
        if data.contains(" waiting=key_confirmation") {
            confirm(&world, &served, public_url, &key).await;
            reached(&[" sectigo=synced"]).await;
        }
        assert!(
            world.sim.domain_id(DOMAIN).is_some(),
            "{}: synced but not in the simulator",
            example.name
        );
        synced += 1;
    }
    // README.md: defaults and [admin] store only; [smtp] and [sectigo] alone (with or without
    // its [sectigo.acme] part) are refused; all of README.md together and INSTALL.md's file
    // reach Sectigo.
    assert_eq!(
        (off, refused, synced),
        (2, 3, 2),
        "the examples' outcomes changed: update these counts"
    );
}
