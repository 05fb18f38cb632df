//! Shared by `tests/hooks.rs` and `tests/certbot_e2e.rs`: the real certline server on an
//! ephemeral loopback port, a line client, a temporary certbot tree built from the fixtures in
//! `tests/fixtures/hooks/`, a PATH holding only the tools the scripts may use, and a runner that
//! bounds how long a script may take.
#![allow(dead_code)] // each test crate uses a different part of this module

pub mod pebble;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The repository root (where `hooks/` and `tests/fixtures/` live).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn hook_script() -> PathBuf {
    repo().join("hooks/certline-certbot-hook")
}

pub fn register_script() -> PathBuf {
    repo().join("hooks/certline-register")
}

/// A certline server started as `certline serve --listen ADDR --data DIR`. It is killed (by
/// its own pid) when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    _data: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Server {
        Server::start_on("127.0.0.1:0")
    }

    /// Starts the server on a given address and waits for its `listening on 127.0.0.1:PORT`
    /// line. `CERTLINE_TEST_BIN` may name another build of the server to test the scripts
    /// against; by default it is this package's binary.
    pub fn start_on(listen: &str) -> Server {
        let data = tempfile::tempdir().expect("temp data dir");
        let stderr = fs::File::create(data.path().join("server.stderr")).expect("stderr file");
        let bin = std::env::var_os("CERTLINE_TEST_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_certline")));
        let mut child = Command::new(bin)
            .args(["serve", "--listen", listen, "--data"])
            .arg(data.path().join("db"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("start certline");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("certline did not say where it listens within 30 s");
            }
        };
        let port = line
            .trim()
            .strip_prefix("listening on 127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from certline: {line:?}"));
        Server {
            child,
            port,
            _data: data,
        }
    }

    /// One request on its own connection; returns the whole reply (data line, status line).
    pub fn request(&self, line: &str) -> String {
        request(self.port, line)
    }

    /// Every domain registered under `key`, following `next=` across pages.
    pub fn domains(&self, key: &str) -> Vec<String> {
        let mut all = Vec::new();
        let mut offset = 0u64;
        loop {
            let reply = self.request(&format!("command list apikey {key} offset {offset}"));
            assert!(
                reply.lines().last() == Some("status ok 200 ok"),
                "list failed: {reply:?}"
            );
            let data = reply
                .lines()
                .find_map(|l| l.strip_prefix("data "))
                .unwrap_or_else(|| panic!("list reply without data: {reply:?}"));
            let fields: BTreeMap<&str, &str> =
                data.split(' ').filter_map(|f| f.split_once('=')).collect();
            if let Some(domains) = fields.get("domains") {
                all.extend(
                    domains
                        .split(',')
                        .filter(|d| !d.is_empty())
                        .map(str::to_owned),
                );
            }
            match fields.get("next") {
                Some(next) => offset = next.parse().expect("next offset"),
                None => return all,
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `line` with a newline on a new connection and reads until the status line.
pub fn request(port: u16, line: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to certline");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream
        .write_all(format!("{line}\n").as_bytes())
        .expect("send request");
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).expect("read reply");
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        if text.ends_with('\n') && text.lines().any(|l| l.starts_with("status ")) {
            break;
        }
    }
    String::from_utf8(reply).expect("reply is UTF-8")
}

/// A loopback port nobody listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A directory of symlinks to just the tools the scripts are allowed to need: bash and
/// coreutils, grep; no curl, no openssl, no logger (so messages go to stdout/stderr), no certbot.
pub fn minimal_path(dir: &Path) -> PathBuf {
    const TOOLS: &[&str] = &[
        "bash", "sh", "timeout", "dd", "od", "base64", "grep", "mktemp", "chmod", "mv", "rm", "cp",
        "mkdir", "sleep", "cat", "env",
    ];
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).expect("bin dir");
    for tool in TOOLS {
        let found = ["/usr/local/bin", "/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} not found on this machine"));
        symlink(&found, bin.join(tool)).expect("symlink tool");
    }
    for absent in ["curl", "openssl", "logger", "certbot", "nc", "socat"] {
        assert!(!bin.join(absent).exists());
    }
    bin
}

/// What a finished script left behind.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    pub fn output(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` and waits at most `limit`; a script still running then is killed and the test
/// fails (a hook that hangs would stall certbot).
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Finished {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn script");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "script still running after {limit:?}; stderr so far: {}",
                err_reader.join().unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    Finished {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
        elapsed,
    }
}

pub fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

pub fn read_trimmed(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// Installs the hook as an executable copy in `dir` (certbot skips non-executable hooks).
pub fn install_hook(dir: &Path) -> PathBuf {
    fs::create_dir_all(dir).expect("hook dir");
    let dest = dir.join("certline-certbot-hook");
    fs::copy(hook_script(), &dest).expect("copy hook");
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).expect("chmod hook");
    dest
}

pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}
