//! The first-boot recipes, run against the real certline binary on an ephemeral loopback
//! port: the cloud-init user-data `contrib/cloud-init/certline-register.yaml` and the
//! container entrypoint `contrib/container/certline-entrypoint`. Each script runs with a
//! cleared environment and a PATH of only bash, coreutils and grep; what it registered is read
//! back from certline with `command list`.
//!
//! The cloud-init tests need the Debian `cloud-init` package (its `cloud-init schema`, and the
//! python3-yaml it brings to read the user-data the way cloud-init does), so they are ignored
//! by default; `.ci/e2e` installs it and runs them with `--include-ignored`, where a missing
//! package fails them.

mod support;

use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::scripts::{
    Server, assert_claimed_by, closed_port, minimal_path, mode_of, read_trimmed, register_script,
    repo, run_bounded, strings,
};

/// Generous bound for a script that talks to a live server on loopback.
const RUN_LIMIT: Duration = Duration::from_secs(60);

fn cloud_config() -> PathBuf {
    repo().join("contrib/cloud-init/certline-register.yaml")
}

fn entrypoint() -> PathBuf {
    repo().join("contrib/container/certline-entrypoint")
}

// ---------------------------------------------------------------------------------------------
// cloud-init

/// The user-data carries hooks/certline-register verbatim, as a YAML literal block (indented
/// six spaces, blank lines left empty). Checked without a YAML parser so a plain `cargo test`
/// catches a script that changed without its copy; the ignored test below decodes it the way
/// cloud-init does.
#[test]
fn cloud_config_embeds_the_current_register_script() {
    let yaml = fs::read_to_string(cloud_config()).expect("read the cloud-config");
    assert!(
        yaml.starts_with("#cloud-config\n"),
        "cloud-init needs the header"
    );
    let script = fs::read_to_string(register_script()).expect("read certline-register");
    let indented: String = script
        .lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_owned()
            } else {
                format!("      {l}\n")
            }
        })
        .collect();
    assert!(
        yaml.contains(&format!("    content: |\n{indented}")),
        "contrib/cloud-init/certline-register.yaml no longer holds hooks/certline-register as \
         it is; regenerate the block from the script"
    );
}

/// README's "Cloud-init and containers" shows the user-data shortened; every line it does
/// show is in the real file, so a copy-paste of the settings and runcmd is what is tested.
#[test]
fn readme_cloud_config_is_the_tested_file_shortened() {
    let readme = fs::read_to_string(repo().join("README.md")).unwrap();
    let snippet = readme
        .split("```yaml\n")
        .find(|block| block.starts_with("#cloud-config\n"))
        .and_then(|block| block.split("```").next())
        .expect("README shows a #cloud-config block");
    let yaml = fs::read_to_string(cloud_config()).unwrap();
    let mut checked = 0;
    for line in snippet.lines().filter(|l| !l.contains("...")) {
        assert!(
            yaml.lines().any(|l| l == line),
            "README's cloud-config line {line:?} is not in {}",
            cloud_config().display()
        );
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} lines compared");
    // The Dockerfile copies files that exist in this repository.
    let dockerfile = readme
        .split("```dockerfile\n")
        .nth(1)
        .and_then(|block| block.split("```").next())
        .expect("README shows a Dockerfile");
    let copy: Vec<&str> = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("COPY "))
        .expect("a COPY line")
        .split_whitespace()
        .collect();
    let (_, sources) = copy.split_last().expect("COPY has a destination");
    assert_eq!(sources.len(), 2);
    for file in sources {
        assert!(repo().join(file).is_file(), "{file}");
    }
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/certline-entrypoint\"]"));
}

/// Finds a tool of the cloud-init package, or fails with what to do.
fn require_cloud_init() -> PathBuf {
    let path = Path::new("/usr/bin/cloud-init");
    assert!(
        path.exists(),
        "cloud-init is not installed: run `bash .ci/install-e2e-deps` (Debian package cloud-init)"
    );
    path.to_path_buf()
}

#[test]
#[ignore = "needs the cloud-init package; .ci/e2e installs it and runs this with --include-ignored"]
fn cloud_config_passes_cloud_init_schema() {
    let cloud_init = require_cloud_init();
    let mut cmd = Command::new(&cloud_init);
    cmd.args(["schema", "--config-file"]).arg(cloud_config());
    let done = run_bounded(cmd, RUN_LIMIT);
    assert!(done.status.success(), "{}", done.output());
    assert!(
        done.stdout.contains("Valid cloud-config"),
        "{}",
        done.output()
    );

    // The validator does reject a broken file (so the pass above means something).
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    let text = fs::read_to_string(cloud_config()).unwrap();
    fs::write(
        &broken,
        text.replace("permissions: \"0755\"", "permissions: 755"),
    )
    .unwrap();
    let mut cmd = Command::new(&cloud_init);
    cmd.args(["schema", "--config-file"]).arg(&broken);
    let done = run_bounded(cmd, RUN_LIMIT);
    assert!(
        !done.status.success(),
        "a numeric mode should be refused; {}",
        done.output()
    );
}

/// What cloud-init would do with the user-data, under `root` instead of `/`: write each of
/// `write_files` with its permissions, return `runcmd` (each entry a list of arguments).
/// Decoded by python3-yaml, the parser cloud-init itself uses.
fn apply_write_files(root: &Path) -> Vec<Vec<String>> {
    let script = r#"
import json, os, sys, yaml
root, source = sys.argv[1], sys.argv[2]
with open(source) as f:
    data = yaml.safe_load(f)
for entry in data["write_files"]:
    path = root + entry["path"]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as out:
        out.write(entry["content"])
    os.chmod(path, int(entry["permissions"], 8))
print(json.dumps(data["runcmd"]))
"#;
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", script])
        .arg(root)
        .arg(cloud_config())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let done = run_bounded(cmd, RUN_LIMIT);
    assert!(
        done.status.success(),
        "python3-yaml read the user-data: {}",
        done.output()
    );
    let runcmd: Value = serde_json::from_str(&done.stdout).expect("runcmd as JSON");
    runcmd
        .as_array()
        .expect("runcmd is a list")
        .iter()
        .map(|entry| {
            entry
                .as_array()
                .expect("each runcmd entry is an argument list (no shell string)")
                .iter()
                .map(|a| a.as_str().expect("string argument").to_owned())
                .collect()
        })
        .collect()
}

#[test]
#[ignore = "needs the cloud-init package; .ci/e2e installs it and runs this with --include-ignored"]
fn cloud_config_registers_the_vm_in_a_clean_environment() {
    require_cloud_init();
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let bin = minimal_path(dir.path());
    let runcmd = apply_write_files(&root);
    let r = root.to_str().expect("UTF-8 temp path");

    let installed = root.join("usr/local/sbin/certline-register");
    assert_eq!(
        fs::read(&installed).unwrap(),
        fs::read(register_script()).unwrap()
    );
    assert_eq!(mode_of(&installed), 0o755);

    // The operator's settings, pointed at this test's server and at the temporary root.
    let settings = root.join("etc/default/certline-register");
    let text = fs::read_to_string(&settings).unwrap();
    assert!(
        text.contains("CERTLINE_HOST=certline.example.org\n"),
        "{text}"
    );
    assert!(text.contains("CERTLINE_PORT=10023\n"), "{text}");
    let text = text
        .replace("certline.example.org", "127.0.0.1")
        .replace("=10023", &format!("={}", server.port))
        .replace("=/var/lib/", &format!("={r}/var/lib/"));
    fs::write(&settings, text).unwrap();

    let rooted = |arg: &str| {
        arg.replace("/etc/default/", &format!("{r}/etc/default/"))
            .replace("/usr/local/sbin/", &format!("{r}/usr/local/sbin/"))
    };
    let run_all = || {
        let mut stderr = String::new();
        for entry in &runcmd {
            let mut cmd = Command::new(rooted(&entry[0]));
            cmd.args(entry[1..].iter().map(|a| rooted(a)))
                .env_clear()
                .env("PATH", &bin)
                .current_dir(&root);
            let done = run_bounded(cmd, RUN_LIMIT);
            assert!(done.status.success(), "runcmd {entry:?}: {}", done.output());
            stderr.push_str(&done.stderr);
        }
        stderr
    };

    let first = run_all();
    let key_file = root.join("var/lib/certline-register/apikey");
    assert_eq!(mode_of(&key_file), 0o600, "{first}");
    let key = read_trimmed(&key_file);
    assert_eq!(
        server.domains(&key),
        strings(&["api.example.org", "www.example.org"])
    );
    assert_claimed_by(&server, &key, "ops@example.org");

    // A re-run (the unit on a later boot, or cloud-init on a cloned instance) is harmless.
    let again = run_all();
    assert_eq!(
        again.matches("domain already registered").count(),
        2,
        "{again}"
    );
    assert_eq!(read_trimmed(&key_file), key);
}

// ---------------------------------------------------------------------------------------------
// container entrypoint

struct Container {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Container {
    fn new() -> Container {
        let dir = tempfile::tempdir().unwrap();
        let bin = minimal_path(dir.path());
        Container { dir, bin }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `certline-entrypoint COMMAND...` as a container runtime starts it: nothing in the
    /// environment but PATH and the image's ENV.
    fn run(
        &self,
        port: u16,
        vars: &[(&str, &str)],
        command: &[&str],
    ) -> support::scripts::Finished {
        let mut cmd = Command::new(entrypoint());
        cmd.env_clear()
            .env("PATH", &self.bin)
            .env("CERTLINE_REGISTER", register_script())
            .env("CERTLINE_HOST", "127.0.0.1")
            .env("CERTLINE_PORT", port.to_string())
            .env("CERTLINE_STATE_DIR", self.state())
            .current_dir(self.dir.path())
            .args(command);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        run_bounded(cmd, RUN_LIMIT)
    }
}

/// The command prints its pid and whether the key was already there, then exits 7.
const PROBE: &[&str] = &[
    "sh",
    "-c",
    r#"echo "pid=$$"; test -s "$CERTLINE_STATE_DIR/apikey" && echo "key was there"; exit 7"#,
];

#[test]
fn container_entrypoint_registers_then_execs_the_command() {
    let server = Server::start();
    let container = Container::new();
    assert_eq!(mode_of(&entrypoint()) & 0o111, 0o111, "executable");

    let done = container.run(
        server.port,
        &[
            ("CERTLINE_DOMAINS", "web.example.org,api.example.org"),
            ("CERTLINE_EMAIL", "ops@example.org"),
        ],
        PROBE,
    );
    assert_eq!(
        done.status.code(),
        Some(7),
        "the command's status; {}",
        done.output()
    );
    assert!(
        done.stdout.contains("key was there"),
        "registered first; {}",
        done.output()
    );
    let key = read_trimmed(&container.state().join("apikey"));
    assert_eq!(
        server.domains(&key),
        strings(&["api.example.org", "web.example.org"])
    );
    assert_claimed_by(&server, &key, "ops@example.org");

    // A restarted container with the state on a volume: same key, nothing new.
    let again = container.run(
        server.port,
        &[("CERTLINE_DOMAINS", "web.example.org,api.example.org")],
        PROBE,
    );
    assert_eq!(again.status.code(), Some(7), "{}", again.output());
    assert_eq!(again.stderr.matches("domain already registered").count(), 2);
    assert_eq!(read_trimmed(&container.state().join("apikey")), key);
}

/// `exec`: the command runs as the entrypoint's own process (PID 1 in a container), not as a
/// child, so it receives the container's signals itself.
#[test]
fn container_entrypoint_replaces_itself_with_the_command() {
    let container = Container::new();
    let mut cmd = Command::new(entrypoint());
    cmd.env_clear()
        .env("PATH", &container.bin)
        .args(["sh", "-c", "echo $$"])
        .stdout(std::process::Stdio::piped());
    let child = cmd.spawn().expect("start the entrypoint");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        pid.to_string()
    );
}

#[test]
fn container_entrypoint_starts_the_command_when_certline_is_down_unless_strict() {
    let container = Container::new();
    let port = closed_port();
    let down = [
        ("CERTLINE_DOMAINS", "web.example.org"),
        ("CERTLINE_RETRIES", "2"),
        ("CERTLINE_BACKOFF", "0.1"),
    ];
    let done = container.run(port, &down, PROBE);
    assert_eq!(done.status.code(), Some(7), "{}", done.output());
    assert!(
        done.stdout.contains("pid="),
        "the command ran; {}",
        done.output()
    );
    assert!(
        done.stderr.contains("unreachable after 2 attempts"),
        "{}",
        done.output()
    );

    let strict: Vec<(&str, &str)> = down
        .iter()
        .copied()
        .chain([("CERTLINE_STRICT", "yes")])
        .collect();
    let done = container.run(port, &strict, PROBE);
    assert!(!done.status.success(), "{}", done.output());
    assert_ne!(done.status.code(), Some(7));
    assert!(
        !done.stdout.contains("pid="),
        "the command must not run; {}",
        done.output()
    );
    assert!(done.stderr.contains("not starting sh"), "{}", done.output());

    // A missing registration script: a warning and the command (or, strict, neither).
    let missing = container.dir.path().join("no-such-script");
    let mut vars = vec![
        ("CERTLINE_DOMAINS", "web.example.org"),
        ("CERTLINE_REGISTER", missing.to_str().unwrap()),
    ];
    let done = container.run(port, &vars, PROBE);
    assert_eq!(done.status.code(), Some(7), "{}", done.output());
    assert!(done.stderr.contains("not installed"), "{}", done.output());
    vars.push(("CERTLINE_STRICT", "true"));
    let done = container.run(port, &vars, PROBE);
    assert_eq!(done.status.code(), Some(69), "{}", done.output());
}

#[test]
fn container_entrypoint_without_domains_just_starts_the_command() {
    let container = Container::new();
    // Nobody listens: a registration attempt would show in stderr.
    let done = container.run(closed_port(), &[], PROBE);
    assert_eq!(done.status.code(), Some(7), "{}", done.output());
    assert!(done.stderr.is_empty(), "{}", done.output());
    assert!(!container.state().exists());

    let mut cmd = Command::new(entrypoint());
    cmd.env_clear().env("PATH", &container.bin);
    let done = run_bounded(cmd, RUN_LIMIT);
    assert_eq!(
        done.status.code(),
        Some(64),
        "usage error; {}",
        done.output()
    );
}
