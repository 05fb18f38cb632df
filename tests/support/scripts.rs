//! For the tests of the shell scripts in `hooks/` and `contrib/` (`tests/hooks.rs`,
//! `tests/certbot_e2e.rs`, `tests/first_boot.rs`, `tests/ansible.rs`): the real certline
//! server from blocking code, the scripts' paths, a PATH holding only the tools the scripts
//! may use, and a runner that bounds how long a script may take.

use super::client::{list_all, request_blocking};
use super::server::{Binary, Launch};
use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
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

/// The real certline binary for blocking test code, on a temporary data directory; its
/// stderr goes to `server.stderr` in that directory.
pub struct Server {
    binary: Binary,
    pub port: u16,
    _data: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Server {
        Server::start_on("127.0.0.1:0")
    }

    /// Starts the server on a given address (see [`Launch::start`]).
    pub fn start_on(listen: &str) -> Server {
        let data = tempfile::tempdir().expect("temp data dir");
        let db = data.path().join("db");
        let stderr = data.path().join("server.stderr");
        let binary = Launch::new(&db)
            .listen(listen.parse().expect("a socket address"))
            .logged("info", Some(&stderr))
            .start();
        Server {
            port: binary.addr.port(),
            binary,
            _data: data,
        }
    }

    /// One request on its own connection; returns the whole reply (data line, status line).
    pub fn request(&self, line: &str) -> String {
        request_blocking(self.binary.addr, line)
    }

    /// Every domain registered under `key`, following `next=` across pages.
    pub fn domains(&self, key: &str) -> Vec<String> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for listing")
            .block_on(list_all(self.binary.addr, key))
            .domains
    }
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

/// `key` is claimed by `email` (compared as the server does, case-insensitively).
pub fn assert_claimed_by(server: &Server, key: &str, email: &str) {
    assert_eq!(
        server.request(&format!("command claim apikey {key} email {email}")),
        "status ok 200 api key already claimed\n",
        "the key should already be claimed by {email}"
    );
}
