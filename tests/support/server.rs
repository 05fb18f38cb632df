//! Starting certline for a test: in-process (fast, gives access to the store) or as the real
//! binary in a child process (for signals, kill -9 and restarts).

use certline::{App, Config, store::Store};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A test configuration: loopback, port 0, short timers, generous rate limits unless a test
/// says otherwise.
pub fn test_config(data_dir: &Path) -> Config {
    let mut config = Config::from_toml(
        r#"
        listen = "127.0.0.1:0"
        [rate_limit]
        apikey_per_minute = 100000
        apikey_burst = 100000
        claim_per_minute = 100000
        claim_burst = 100000
        [claims]
        max_new_emails_per_address_per_day = 100000
        "#,
    )
    .expect("test config parses");
    config.data_dir = data_dir.to_path_buf();
    config
}

/// A server running inside the test process.
pub struct InProcess {
    pub addr: SocketAddr,
    /// The admin listener, when the configuration has `[admin]`.
    pub admin: Option<SocketAddr>,
    pub store: Arc<Store>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
    _dir: Option<tempfile::TempDir>,
}

impl InProcess {
    /// Starts a server with [`test_config`] on a fresh temporary directory.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = test_config(&dir.path().join("data"));
        let mut s = Self::start_with(config).await;
        s._dir = Some(dir);
        s
    }

    /// Starts a server with the given configuration.
    pub async fn start_with(config: Config) -> Self {
        let server = App::start(config).await.expect("server starts");
        let addr = server.local_addr();
        let admin = server.admin_addr();
        let store = server.store();
        let shutdown = server.shutdown_token();
        let task = tokio::spawn(async move { server.run().await.expect("server runs") });
        Self {
            addr,
            admin,
            store,
            shutdown,
            task,
            _dir: None,
        }
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(self) -> Option<tempfile::TempDir> {
        self.shutdown.cancel();
        self.task.await.expect("server task");
        drop(self.store);
        self._dir
    }
}

/// The real `certline` binary in a child process.
pub struct Binary {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin listener, when the configuration has `[admin]`.
    pub admin: Option<SocketAddr>,
    pub data_dir: PathBuf,
}

impl Binary {
    /// Runs `certline serve --listen 127.0.0.1:0 --data DATA [--config CONFIG]` and waits for
    /// its `listening on` line.
    pub fn start(data_dir: &Path, config: Option<&Path>) -> Self {
        Self::start_logged(data_dir, config, "warn", None)
    }

    /// Like [`Binary::start`], with a log filter and, optionally, stderr captured in a file.
    pub fn start_logged(
        data_dir: &Path,
        config: Option<&Path>,
        rust_log: &str,
        log_file: Option<&Path>,
    ) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_certline"));
        let stderr = match log_file {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("log file"),
            ),
            None => Stdio::inherit(),
        };
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data_dir)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        let mut child = cmd.spawn().expect("spawn certline");
        let stdout = child.stdout.take().expect("stdout");
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("address");
        // With [admin], a second line names the admin listener; the configuration says.
        let has_admin = config
            .and_then(|c| std::fs::read_to_string(c).ok())
            .is_some_and(|text| text.lines().any(|l| l.trim() == "[admin]"));
        let admin = has_admin.then(|| {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("read the admin line");
            line.trim()
                .strip_prefix("admin listening on ")
                .unwrap_or_else(|| panic!("unexpected second line {line:?}"))
                .parse()
                .expect("admin address")
        });
        Self {
            child,
            addr,
            admin,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        self.child.wait().expect("wait")
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
