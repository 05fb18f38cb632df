//! The Ansible collection `certline.registry` (contrib/ansible/ansible_collections/certline/
//! registry) run by real `ansible-playbook` (ansible-core from PyPI) with a local connection
//! against the real certline binary on an ephemeral loopback port. What the modules did is read
//! back from certline over the line protocol, never taken from the modules' own word.
//!
//! ansible-core is not part of a plain `cargo test` machine, so these tests are ignored by
//! default; `.ci/e2e` installs it (`.ci/install-e2e-deps`) and runs them with
//! `--include-ignored`. Run that way without ansible-core they fail: they never pass by
//! skipping.

mod support;

use serde_json::{Value, json};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use support::bridge_setup::sectigo_section;
use support::scm_sim::{self, ScmSim};
use support::scripts::{Finished, Server, closed_port, mode_of, read_trimmed, repo, run_bounded};
use support::server::{InProcess, test_config};

/// ansible-playbook starts a Python interpreter per task; on a loaded 2-core machine a short
/// playbook still takes seconds. This bounds a hung run, not a slow one.
const PLAYBOOK_LIMIT: Duration = Duration::from_secs(300);

const COLLECTION: &str = "contrib/ansible";
const MODULES: &[(&str, &[&str])] = &[
    (
        "certline_domain",
        &[
            "name",
            "state",
            "api_key",
            "api_key_file",
            "host",
            "port",
            "timeout",
        ],
    ),
    (
        "certline_apikey",
        &["path", "email", "api_key", "host", "port", "timeout"],
    ),
    (
        "certline_domain_info",
        &["name", "api_key", "api_key_file", "host", "port", "timeout"],
    ),
];

/// Where ansible-core is: `$CERTLINE_ANSIBLE_VENV/bin` (default `/opt/certline-e2e/ansible`,
/// where `.ci/install-e2e-deps` puts it), else `ansible-playbook` on PATH. Missing is a
/// failure with what to do.
fn ansible_bin_dir() -> PathBuf {
    let venv = std::env::var_os("CERTLINE_ANSIBLE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/certline-e2e/ansible"));
    let candidates = std::iter::once(venv.join("bin")).chain(
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default(),
    );
    for dir in candidates {
        if dir.join("ansible-playbook").is_file() && dir.join("ansible-doc").is_file() {
            return dir;
        }
    }
    panic!(
        "ansible-core is not installed: run `bash .ci/install-e2e-deps` (it makes a venv at \
         /opt/certline-e2e/ansible) or point CERTLINE_ANSIBLE_VENV at a venv with ansible-core"
    );
}

/// One isolated Ansible controller: its own ANSIBLE_HOME, temp dirs and an empty config, the
/// collection from this repository, and the Python of ansible-core's venv on the "managed"
/// (local) side.
struct Ansible {
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl Ansible {
    fn new() -> Ansible {
        let bin = ansible_bin_dir();
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join("ansible.cfg"), "").expect("empty ansible.cfg");
        Ansible { bin, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(tool));
        let d = self.dir.path();
        let python = ["python3", "python"]
            .iter()
            .map(|p| self.bin.join(p))
            .find(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("/usr/bin/python3"));
        cmd.env_clear()
            .current_dir(d)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", d)
            .env("LC_ALL", "C.UTF-8")
            .env("ANSIBLE_CONFIG", d.join("ansible.cfg"))
            .env("ANSIBLE_HOME", d.join("home"))
            .env("ANSIBLE_LOCAL_TEMP", d.join("local-tmp"))
            .env("ANSIBLE_REMOTE_TEMP", d.join("remote-tmp"))
            .env("ANSIBLE_COLLECTIONS_PATH", repo().join(COLLECTION))
            .env("ANSIBLE_COLLECTIONS_SCAN_SYS_PATH", "false")
            .env("ANSIBLE_PYTHON_INTERPRETER", python)
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "false")
            // No __pycache__ in the collection's source tree.
            .env("PYTHONDONTWRITEBYTECODE", "1");
        cmd
    }

    /// Runs a playbook of `tasks` on localhost (local connection). Each task's result is
    /// registered as `rN` (N its index) with `ignore_errors`, so a failing task is asserted on
    /// like any other, and all results are returned as `[r0, r1, ...]`.
    fn play(&self, tasks: &[Value], args: &[&str]) -> Played {
        let results = self.path("results.json");
        let _ = fs::remove_file(&results);
        let mut list: Vec<Value> = tasks
            .iter()
            .enumerate()
            .map(|(i, task)| {
                let mut task = task.clone();
                task["register"] = json!(format!("r{i}"));
                task["ignore_errors"] = json!(true);
                task
            })
            .collect();
        let all: Vec<String> = (0..tasks.len()).map(|i| format!("r{i}")).collect();
        list.push(json!({
            "name": "save the results for the test",
            "ansible.builtin.copy": {
                "content": format!("{{{{ [{}] | to_json }}}}", all.join(", ")),
                "dest": results,
            },
            "check_mode": false,
            "diff": false,
            // So the play recap's `changed=` counts the tasks under test only.
            "changed_when": false,
        }));
        // JSON is YAML: the playbook needs no YAML writer.
        let playbook = json!([{"hosts": "localhost", "gather_facts": false, "tasks": list}]);
        let file = self.path("playbook.yml");
        fs::write(&file, playbook.to_string()).expect("write playbook");
        let mut cmd = self.command("ansible-playbook");
        cmd.args(["-i", "localhost,", "-c", "local"])
            .arg(&file)
            .args(args);
        let done = run_bounded(cmd, PLAYBOOK_LIMIT);
        assert!(
            done.status.success(),
            "ansible-playbook failed (every task ignores errors, so this is the playbook or \
             ansible itself); {}",
            done.output()
        );
        let text = fs::read_to_string(&results)
            .unwrap_or_else(|e| panic!("no results file ({e}); {}", done.output()));
        let results: Vec<Value> = serde_json::from_str(&text).expect("results are JSON");
        Played {
            done,
            results,
            raw: text,
        }
    }
}

struct Played {
    done: Finished,
    results: Vec<Value>,
    /// The results file as written, to search it for secrets.
    raw: String,
}

impl Played {
    fn only(&self) -> &Value {
        assert_eq!(self.results.len(), 1);
        &self.results[0]
    }
}

fn new_key(server: &Server) -> String {
    let reply = server.request("command apikey");
    reply
        .lines()
        .find_map(|l| l.strip_prefix("data "))
        .unwrap_or_else(|| panic!("no key in {reply:?}"))
        .to_owned()
}

fn domain_task(server: &Server, key: Value, names: &[&str], state: &str) -> Value {
    domain_task_on(server.port, key, names, state)
}

fn domain_task_on(port: u16, key: Value, names: &[&str], state: &str) -> Value {
    let mut args = json!({"port": port, "host": "127.0.0.1", "name": names, "state": state});
    for (k, v) in key.as_object().expect("key option").iter() {
        args[k] = v.clone();
    }
    json!({"certline.registry.certline_domain": args})
}

fn statuses(result: &Value) -> Vec<String> {
    result["domains"]
        .as_array()
        .unwrap_or_else(|| panic!("no domains in {result}"))
        .iter()
        .map(|d| d["status"].as_str().expect("status text").to_owned())
        .collect()
}

fn assert_succeeded(result: &Value) {
    assert_eq!(result["failed"], json!(false), "the task failed: {result}");
}

#[test]
#[ignore = "needs ansible-core; .ci/e2e installs it and runs them with --include-ignored"]
fn domain_module_is_idempotent_and_check_mode_changes_nothing() {
    let server = Server::start();
    let ansible = Ansible::new();
    let key = new_key(&server);
    let key_file = ansible.path("apikey");
    fs::write(&key_file, format!("{key}\n")).unwrap();
    let by_value = json!({"api_key": key});
    let by_file = json!({"api_key_file": key_file});
    let names = ["www.example.org", "API.Example.org."];

    // Check mode predicts with `status` and writes nothing.
    let run = ansible.play(
        &[domain_task(&server, by_value.clone(), &names, "present")],
        &["--check", "--diff"],
    );
    let r = run.only();
    assert_succeeded(r);
    assert_eq!(r["changed"], json!(true), "{r}");
    assert_eq!(
        statuses(r),
        ["domain would be added", "domain would be added"]
    );
    assert!(
        run.done.stdout.contains("+API.Example.org."),
        "the diff shows what would be added; {}",
        run.done.output()
    );
    assert!(server.domains(&key).is_empty(), "check mode wrote");

    // The real run adds both; the result carries the normalised forms.
    let run = ansible.play(
        &[domain_task(&server, by_file.clone(), &names, "present")],
        &["--diff"],
    );
    let r = run.only();
    assert_succeeded(r);
    assert_eq!(r["changed"], json!(true));
    assert_eq!(statuses(r), ["domain added", "domain added"]);
    assert_eq!(r["domains"][1]["domain"], json!("api.example.org"));
    assert!(
        run.done.stdout.contains("+api.example.org"),
        "{}",
        run.done.output()
    );
    assert_eq!(server.domains(&key), ["api.example.org", "www.example.org"]);
    assert!(
        run.done.stdout.contains("changed=1"),
        "{}",
        run.done.output()
    );

    // Again: nothing changes, and the play recap says so.
    let run = ansible.play(
        &[domain_task(&server, by_value.clone(), &names, "present")],
        &[],
    );
    let r = run.only();
    assert_succeeded(r);
    assert_eq!(r["changed"], json!(false), "{r}");
    assert_eq!(
        statuses(r),
        ["domain already registered", "domain already registered"]
    );
    assert!(
        run.done.stdout.contains("changed=0"),
        "{}",
        run.done.output()
    );

    // Check mode for absent: predicts the removal, removes nothing.
    let run = ansible.play(
        &[domain_task(&server, by_value.clone(), &names, "absent")],
        &["--check"],
    );
    let r = run.only();
    assert_succeeded(r);
    assert_eq!(r["changed"], json!(true));
    assert_eq!(
        statuses(r),
        ["domain would be removed", "domain would be removed"]
    );
    assert_eq!(server.domains(&key).len(), 2, "check mode removed");

    // absent removes; a second absent is no change.
    let run = ansible.play(
        &[
            domain_task(&server, by_value.clone(), &["www.example.org"], "absent"),
            domain_task(&server, by_file, &names, "absent"),
        ],
        &[],
    );
    assert_succeeded(&run.results[0]);
    assert_eq!(run.results[0]["changed"], json!(true));
    assert_eq!(statuses(&run.results[0]), ["domain removed"]);
    assert_succeeded(&run.results[1]);
    assert_eq!(run.results[1]["changed"], json!(true));
    assert_eq!(
        statuses(&run.results[1]),
        ["domain was not registered", "domain removed"]
    );
    assert!(server.domains(&key).is_empty());

    let run = ansible.play(&[domain_task(&server, by_value, &names, "absent")], &[]);
    assert_eq!(run.only()["changed"], json!(false));
}

#[test]
#[ignore = "needs ansible-core; .ci/e2e installs it and runs them with --include-ignored"]
fn refusals_fail_the_task_with_the_servers_code_and_text() {
    let server = Server::start();
    let ansible = Ansible::new();
    let key = new_key(&server);
    let by_value = json!({"api_key": key});
    let unknown = json!({"api_key": "00000000-0000-0000-0000-000000000000"});
    let mut unreachable = domain_task(&server, by_value.clone(), &["x.example.org"], "present");
    unreachable["certline.registry.certline_domain"]["port"] = json!(closed_port());

    let run = ansible.play(
        &[
            domain_task(
                &server,
                by_value.clone(),
                &["ok.example.org", "exa_mple..org"],
                "present",
            ),
            domain_task(&server, unknown, &["ok.example.org"], "present"),
            domain_task(
                &server,
                by_value,
                &["smuggled.example.org apikey other"],
                "present",
            ),
            unreachable,
        ],
        &[],
    );
    let [bad_name, bad_key, smuggled, down] = &run.results[..] else {
        panic!("four results expected: {:?}", run.results)
    };

    assert_eq!(bad_name["failed"], json!(true), "{bad_name}");
    assert_eq!(bad_name["status_code"], json!(406));
    assert_eq!(bad_name["status_text"], json!("invalid domain"));
    let msg = bad_name["msg"].as_str().unwrap();
    assert!(
        msg.contains("exa_mple..org") && msg.ends_with("406 invalid domain"),
        "{msg}"
    );
    // The name before it was applied, and the task says so.
    assert_eq!(bad_name["changed"], json!(true));
    assert_eq!(statuses(bad_name), ["domain added"]);
    assert!(
        run.done.stdout.contains("406 invalid domain"),
        "{}",
        run.done.output()
    );

    assert_eq!(bad_key["failed"], json!(true));
    assert_eq!(bad_key["status_code"], json!(401));
    assert_eq!(bad_key["status_text"], json!("unknown api key"));

    assert_eq!(smuggled["failed"], json!(true));
    assert!(
        smuggled["msg"]
            .as_str()
            .unwrap()
            .contains("holds a space or a control character"),
        "{smuggled}"
    );
    assert!(smuggled.get("status_code").is_none(), "nothing was sent");

    assert_eq!(down["failed"], json!(true));
    assert!(
        down["msg"].as_str().unwrap().contains("cannot connect"),
        "{down}"
    );

    assert_eq!(server.domains(&key), ["ok.example.org"]);
}

/// A server at its connection cap answers `503 too many connections` and closes: the task
/// fails with that code, not with a vague connection error.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs ansible-core; .ci/e2e installs it and runs them with --include-ignored"]
async fn a_full_server_fails_the_task_with_503() {
    let ansible = Ansible::new();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.limits.max_connections = 1;
    let server = InProcess::start_with(config).await;
    let port = server.addr.port();
    // The one allowed connection, held open (the ping proves the server counted it).
    let mut held = std::net::TcpStream::connect(server.addr).unwrap();
    held.write_all(b"command ping\n").unwrap();
    let mut pong = [0u8; 19];
    held.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"status ok 200 pong\n");
    let key = json!({"api_key": "00000000-0000-0000-0000-000000000000"});
    let task = domain_task_on(port, key, &["www.example.org"], "present");
    let results = tokio::task::spawn_blocking(move || ansible.play(&[task], &[]).results)
        .await
        .unwrap();
    let r = &results[0];
    assert_eq!(r["failed"], json!(true), "{r}");
    assert_eq!(r["status_code"], json!(503), "{r}");
    assert_eq!(r["status_text"], json!("too many connections"));
    drop(held);
    server.stop().await;
}

#[test]
#[ignore = "needs ansible-core; .ci/e2e installs it and runs them with --include-ignored"]
fn the_api_key_never_appears_in_the_output() {
    let server = Server::start();
    let ansible = Ansible::new();
    let key = new_key(&server);
    let key_file = ansible.path("apikey");
    fs::write(&key_file, format!("{key}\n")).unwrap();
    let minted_file = ansible.path("minted");
    let port = server.port;

    let run = ansible.play(
        &[
            domain_task(
                &server,
                json!({"api_key": key}),
                &["a.example.org"],
                "present",
            ),
            domain_task(
                &server,
                json!({"api_key_file": key_file}),
                &["b.example.org"],
                "present",
            ),
            domain_task(
                &server,
                json!({"api_key": key}),
                &["exa_mple..org"],
                "present",
            ),
            json!({"certline.registry.certline_domain_info": {
                "port": port, "api_key_file": key_file, "name": ["a.example.org"]}}),
            json!({"certline.registry.certline_apikey": {
                "port": port, "path": minted_file, "email": "ops@example.org"}}),
            json!({"certline.registry.certline_apikey": {
                "port": port, "path": minted_file, "email": "ops@example.org"}}),
        ],
        &["-vvv", "--diff"],
    );
    let minted = read_trimmed(&minted_file);
    assert_eq!(minted.len(), 36, "a server-made key: {minted:?}");
    for (i, r) in run.results.iter().enumerate() {
        assert_eq!(r["failed"], json!(i == 2), "task {i}: {r}");
    }
    assert_eq!(
        server.domains(&key),
        ["a.example.org", "b.example.org"],
        "the tasks ran"
    );
    for secret in [&key, &minted] {
        for (what, text) in [
            ("stdout", &run.done.stdout),
            ("stderr", &run.done.stderr),
            ("results", &run.raw),
        ] {
            assert!(
                !text.contains(secret.as_str()),
                "the API key appears in {what}:\n{text}"
            );
        }
    }
    // -vvv did print the module arguments, masked.
    assert!(
        run.done
            .stdout
            .contains("VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"),
        "{}",
        run.done.output()
    );
}

#[test]
#[ignore = "needs ansible-core; .ci/e2e installs it and runs them with --include-ignored"]
fn apikey_module_keeps_a_private_key_file_and_reuses_it() {
    let server = Server::start();
    let ansible = Ansible::new();
    let path = ansible.path("keys/apikey");
    fs::create_dir(ansible.path("keys")).unwrap();
    let task = |extra: Value| {
        let mut args = json!({"port": server.port, "path": path, "email": "ops@example.org"});
        for (k, v) in extra.as_object().unwrap() {
            args[k] = v.clone();
        }
        json!({"certline.registry.certline_apikey": args})
    };

    // Check mode: would create, creates nothing.
    let run = ansible.play(&[task(json!({}))], &["--check"]);
    let r = run.only();
    assert_succeeded(r);
    assert_eq!(
        (r["changed"].clone(), r["created"].clone()),
        (json!(true), json!(true))
    );
    assert!(!path.exists());

    // First run: a new key, claimed, in a 0600 file.
    let run = ansible.play(&[task(json!({}))], &[]);
    let r = run.only();
    assert_succeeded(r);
    assert_eq!(r["changed"], json!(true));
    assert_eq!(r["claim"], json!("api key created and claimed"));
    assert_eq!(mode_of(&path), 0o600);
    let key = read_trimmed(&path);
    assert_eq!(
        server.request(&format!("command claim apikey {key} email OPS@example.org")),
        "status ok 200 api key already claimed\n"
    );
    assert_eq!(
        server.request(&format!("command add domain k.example.org apikey {key}")),
        "data k.example.org\nstatus ok 200 domain added\n",
        "the kept key works"
    );

    // Second run: the file is reused, nothing changes.
    let run = ansible.play(&[task(json!({}))], &[]);
    let r = run.only();
    assert_succeeded(r);
    assert_eq!(r["changed"], json!(false), "{r}");
    assert_eq!(r["created"], json!(false));
    assert_eq!(r["claim"], json!("api key already claimed"));
    assert_eq!(read_trimmed(&path), key);

    // A file that became readable by others is made private again; the key stays.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let run = ansible.play(&[task(json!({}))], &[]);
    assert_eq!(run.only()["changed"], json!(true));
    assert_eq!(mode_of(&path), 0o600);
    assert_eq!(read_trimmed(&path), key);

    // Another address cannot take the key: 409, and the file is left alone.
    let run = ansible.play(&[task(json!({"email": "someone@example.net"}))], &[]);
    let r = run.only();
    assert_eq!(r["failed"], json!(true));
    assert_eq!(r["status_code"], json!(409));
    assert_eq!(r["status_text"], json!("api key claimed by another email"));
    assert_eq!(read_trimmed(&path), key);

    // A client-made key is created by its claim; without e-mail, a kept key the server does
    // not know fails with 401.
    let own = "my-own-key-0123456789";
    let own_path = ansible.path("keys/own");
    let mut own_task = task(json!({"api_key": own}));
    own_task["certline.registry.certline_apikey"]["path"] = json!(own_path);
    let unknown_path = ansible.path("keys/unknown");
    fs::write(&unknown_path, "not-known-here-0123456789\n").unwrap();
    let mut unknown_task = task(json!({}));
    unknown_task["certline.registry.certline_apikey"]["path"] = json!(unknown_path);
    unknown_task["certline.registry.certline_apikey"]
        .as_object_mut()
        .unwrap()
        .remove("email");
    // Without e-mail, the kept key is checked with the read-only `list` and reused.
    let mut reuse_task = task(json!({}));
    reuse_task["certline.registry.certline_apikey"]
        .as_object_mut()
        .unwrap()
        .remove("email");
    let run = ansible.play(&[own_task, unknown_task, reuse_task], &[]);
    assert_succeeded(&run.results[2]);
    assert_eq!(
        run.results[2]["changed"],
        json!(false),
        "{}",
        run.results[2]
    );
    assert!(run.results[2].get("claim").is_none());
    assert_eq!(read_trimmed(&path), key);
    assert_succeeded(&run.results[0]);
    assert_eq!(run.results[0]["claim"], json!("api key claimed"));
    assert_eq!(read_trimmed(&own_path), own);
    assert_eq!(mode_of(&own_path), 0o600);
    assert_eq!(
        run.results[1]["status_code"],
        json!(401),
        "{}",
        run.results[1]
    );
}

#[test]
#[ignore = "needs ansible-core; .ci/e2e installs it and runs them with --include-ignored"]
fn domain_info_returns_the_status_fields_as_a_dict() {
    let server = Server::start();
    let ansible = Ansible::new();
    let key = new_key(&server);
    server.request(&format!("command add domain www.example.org apikey {key}"));
    let task = json!({
        "certline.registry.certline_domain_info": {
            "port": server.port, "api_key": key,
            "name": ["WWW.Example.org", "missing.example.org"]},
        // What a playbook waiting for Sectigo writes; without a bridge the state is `off`.
        "until": "r0.domains['WWW.Example.org'].sectigo == 'off'",
        "retries": 3,
        "delay": 1,
    });
    let run = ansible.play(&[task], &["--check"]);
    let r = run.only();
    assert_succeeded(r);
    assert_eq!(r["changed"], json!(false));
    let found = &r["domains"]["WWW.Example.org"];
    assert_eq!(found["present"], json!(true), "{r}");
    assert_eq!(found["domain"], json!("www.example.org"));
    assert_eq!(found["key"], json!("unconfirmed"));
    assert_eq!(found["sectigo"], json!("off"));
    let registered = found["registered"].as_str().unwrap();
    assert!(
        registered.len() == 20 && registered.ends_with('Z') && registered.as_bytes()[10] == b'T',
        "RFC 3339 seconds: {registered}"
    );
    let raw = found["raw"].as_str().unwrap();
    let status = server.request(&format!(
        "command status domain www.example.org apikey {key}"
    ));
    assert_eq!(status, format!("data {raw}\nstatus ok 200 ok\n"));
    assert_eq!(
        r["domains"]["missing.example.org"],
        json!({"present": false})
    );
}

/// The README's playbook, end to end with the Sectigo bridge on: a key in a private file, the
/// domain registered with it, then `certline_domain_info` polled until certline reports the
/// domain synced into the SCM simulator with its DCV validated.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs ansible-core; .ci/e2e installs it and runs them with --include-ignored"]
async fn a_playbook_waits_until_sectigo_has_the_domain() {
    let ansible = Ansible::new();
    let sim = ScmSim::start().await;
    let today = chrono::Utc::now().date_naive();
    let expires = today + chrono::Duration::days(300);
    sim.add_domain("www.example.edu");
    sim.set_dcv_validated("www.example.edu", today, expires);
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("sectigo-password");
    fs::write(&password_file, scm_sim::PASSWORD).unwrap();
    let settings = "allowed_suffixes = [\"example.edu\"]\ncreate_missing = false\n\
                    ct_monitoring = false\nrequire_confirmed_key = false\n";
    let mut config =
        certline::Config::from_toml(&sectigo_section(&sim, &password_file, settings)).unwrap();
    let base = test_config(&dir.path().join("data"));
    config.listen = base.listen;
    config.data_dir = base.data_dir;
    config.rate_limit = base.rate_limit;
    let server = InProcess::start_with(config).await;
    let port = server.addr.port();
    let key_file = ansible.path("apikey");

    let tasks = vec![
        json!({"certline.registry.certline_apikey": {"port": port, "path": key_file}}),
        domain_task_on(
            port,
            json!({"api_key_file": key_file}),
            &["www.example.edu"],
            "present",
        ),
        json!({
            "certline.registry.certline_domain_info": {
                "port": port, "api_key_file": key_file, "name": "www.example.edu"},
            "until": "r2.domains['www.example.edu'].sectigo | default('') == 'synced' \
                      and r2.domains['www.example.edu'].dcv | default('') == 'VALIDATED'",
            "retries": 120,
            "delay": 1,
        }),
    ];
    // ansible-playbook blocks; the in-process server and the simulator keep running.
    let results = tokio::task::spawn_blocking(move || ansible.play(&tasks, &[]).results)
        .await
        .unwrap();
    for r in &results {
        assert_succeeded(r);
    }
    let status = &results[2]["domains"]["www.example.edu"];
    assert_eq!(status["sectigo"], json!("synced"), "{status}");
    assert_eq!(status["dcv"], json!("VALIDATED"));
    assert_eq!(status["dcv_expires"], json!(expires.to_string()));
    let id = sim.domain_id("www.example.edu").expect("in the simulator");
    assert_eq!(status["id"], json!(id.to_string()));
    server.stop().await;
}

/// protocol.md's `status` examples, and the quoting rules of `dcv_value` and `error`, through
/// the module_utils parser (plain Python, no Ansible needed; but `cargo test` alone needs only
/// Rust and bash, so it runs with the others).
#[test]
#[ignore = "needs python3; .ci/e2e runs it with --include-ignored"]
fn status_fields_are_parsed_as_protocol_md_writes_them() {
    let script = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
from line_protocol import parse_status_fields
print(json.dumps([parse_status_fields(line) for line in sys.argv[2:]]))
"#;
    let lines = [
        r#"domain=www.example.edu registered=2026-11-23T10:00:00Z key=confirmed sectigo=synced id=396 dcv=VALIDATED dcv_expires=2027-05-21 ct=on checked=2026-11-23T10:00:05Z"#,
        r#"domain=a.b registered=2026-11-23T10:00:00Z key=confirmed sectigo=failed next_attempt=2026-11-24T10:00:01Z error_step=create error_code=-712 error="The domain name should be at least 4 characters in length.""#,
        r#"domain=t.example.edu key=confirmed sectigo=dcv_action_required dcv_record_type=TXT dcv_host=_dcv.t.example.edu. dcv_value="a \"b\" c\\d=e f" next_attempt=x error_step=dcv_wait error="it's a \ backslash, a = sign and a 'quote'""#,
    ];
    let utils = repo()
        .join(COLLECTION)
        .join("ansible_collections/certline/registry/plugins/module_utils");
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(script)
        .arg(&utils)
        .args(lines)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let done = run_bounded(cmd, Duration::from_secs(60));
    assert!(done.status.success(), "{}", done.output());
    let parsed: Value = serde_json::from_str(&done.stdout).expect("JSON from the parser");
    assert_eq!(parsed[0]["id"], json!("396"));
    assert_eq!(parsed[0]["dcv"], json!("VALIDATED"));
    assert_eq!(parsed[0]["checked"], json!("2026-11-23T10:00:05Z"));
    assert_eq!(parsed[0].as_object().unwrap().len(), 9);
    assert_eq!(parsed[1]["error_code"], json!("-712"));
    assert_eq!(
        parsed[1]["error"],
        json!("The domain name should be at least 4 characters in length.")
    );
    assert_eq!(parsed[2]["dcv_value"], json!(r#"a "b" c\d=e f"#));
    assert_eq!(parsed[2]["next_attempt"], json!("x"));
    assert_eq!(
        parsed[2]["error"],
        json!(r"it's a \ backslash, a = sign and a 'quote'")
    );
}

#[test]
#[ignore = "needs ansible-core; .ci/e2e installs it and runs them with --include-ignored"]
fn ansible_doc_renders_every_module() {
    let ansible = Ansible::new();
    let mut list = ansible.command("ansible-doc");
    list.args(["--list", "certline.registry"]);
    let listed = run_bounded(list, PLAYBOOK_LIMIT);
    assert!(listed.status.success(), "{}", listed.output());
    for (module, options) in MODULES {
        let fqcn = format!("certline.registry.{module}");
        assert!(listed.stdout.contains(&fqcn), "{}", listed.output());

        let mut cmd = ansible.command("ansible-doc");
        cmd.arg(&fqcn);
        let doc = run_bounded(cmd, PLAYBOOK_LIMIT);
        assert!(doc.status.success(), "{fqcn}: {}", doc.output());
        assert!(
            !doc.stderr.contains("WARNING") && !doc.stderr.contains("ERROR"),
            "{fqcn}: {}",
            doc.output()
        );
        for section in ["OPTIONS", "EXAMPLES", "RETURN VALUES", "ATTRIBUTES"] {
            assert!(doc.stdout.contains(section), "{fqcn} lacks {section}");
        }
        // The JSON form says exactly which options are documented: the argument spec's.
        let mut cmd = ansible.command("ansible-doc");
        cmd.args(["--json", &fqcn]);
        let json_doc = run_bounded(cmd, PLAYBOOK_LIMIT);
        assert!(json_doc.status.success(), "{}", json_doc.output());
        let parsed: Value = serde_json::from_str(&json_doc.stdout).expect("ansible-doc --json");
        let documented = parsed[&fqcn]["doc"]["options"]
            .as_object()
            .unwrap_or_else(|| panic!("{fqcn}: no options in {parsed}"));
        let mut names: Vec<&str> = documented.keys().map(String::as_str).collect();
        names.sort();
        let mut expected = options.to_vec();
        expected.sort();
        assert_eq!(names, expected, "{fqcn}");
        for (name, option) in documented {
            assert!(
                option["description"]
                    .as_array()
                    .is_some_and(|d| !d.is_empty())
                    || option["description"].is_string(),
                "{fqcn}: option {name} has no description"
            );
        }
    }
}
