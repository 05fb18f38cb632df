//! Starting certline for a test: in-process (fast, gives access to the store) or as the real
//! binary in a child process (for signals, kill -9 and restarts).

use certline::{App, Config, store::Store};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};
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
    if super::postgres::selected() {
        config.store = Config::from_toml(&super::postgres::store_section_for(data_dir))
            .expect("the test [store] section parses")
            .store;
    }
    config
}

/// [`test_config`] on the embedded store whatever `CERTLINE_TEST_STORE` says: for tests of
/// what only the embedded store has (its write-ahead log, group commit, files on disk).
pub fn test_config_sled(data_dir: &Path) -> Config {
    let mut config = test_config(data_dir);
    config.store = Default::default();
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

    /// [`InProcess::start`] on the embedded store ([`test_config_sled`]).
    pub async fn start_sled() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = test_config_sled(&dir.path().join("data"));
        let mut s = Self::start_with_sled(config).await;
        s._dir = Some(dir);
        s
    }

    /// Starts a server with the given configuration. Under `CERTLINE_TEST_STORE=postgres` a
    /// configuration on the default store (no `[store]`: the tests build theirs from TOML and
    /// [`test_config`]'s fields) runs on PostgreSQL, in the schema of its data directory.
    pub async fn start_with(mut config: Config) -> Self {
        let default_store = matches!(config.store.backend, certline::store::config::Backend::Sled)
            && config.store.postgres.is_none();
        if default_store && super::postgres::selected() {
            config.store = test_config(&config.data_dir).store;
        }
        Self::start_with_sled(config).await
    }

    /// Starts a server with exactly the given configuration, on the embedded store unless
    /// it names another: for tests of what only the embedded store has (see
    /// [`test_config_sled`]).
    pub async fn start_with_sled(config: Config) -> Self {
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

/// How long the binary may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How to run the binary: every field has a default ([`Launch::new`]).
pub struct Launch<'a> {
    pub data_dir: &'a Path,
    pub config: Option<&'a Path>,
    /// `--listen`; port 0 by default.
    pub listen: SocketAddr,
    /// `RUST_LOG`.
    pub rust_log: &'a str,
    /// Where stderr goes (appended); inherited when `None`.
    pub log_file: Option<&'a Path>,
    /// More environment variables (the secrets a configuration names).
    pub envs: Vec<(String, String)>,
    /// Stay on the embedded store whatever `CERTLINE_TEST_STORE` says ([`Launch::sled`]).
    pub sled_only: bool,
}

impl<'a> Launch<'a> {
    /// `certline serve --listen 127.0.0.1:0 --data DATA`, logging warnings to the test's stderr.
    pub fn new(data_dir: &'a Path) -> Self {
        Self {
            data_dir,
            config: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            rust_log: "warn",
            log_file: None,
            envs: Vec::new(),
            sled_only: false,
        }
    }

    /// For tests of what only the embedded store has (its log segments, files on disk).
    pub fn sled(mut self) -> Self {
        self.sled_only = true;
        self
    }

    pub fn envs(mut self, envs: &[(String, String)]) -> Self {
        self.envs.extend_from_slice(envs);
        self
    }

    pub fn config(mut self, config: &'a Path) -> Self {
        self.config = Some(config);
        self
    }

    pub fn listen(mut self, listen: SocketAddr) -> Self {
        self.listen = listen;
        self
    }

    pub fn logged(mut self, rust_log: &'a str, log_file: Option<&'a Path>) -> Self {
        self.rust_log = rust_log;
        self.log_file = log_file;
        self
    }

    /// Starts the binary and waits (up to [`START_TIMEOUT`]) for its `listening on` line.
    /// `CERTLINE_TEST_BIN` may name another build of the server to test against.
    pub fn start(self) -> Binary {
        self.try_start()
            .unwrap_or_else(|status| panic!("certline exited at start: {status}"))
    }

    /// Like [`Launch::start`], but a server that exits before listening (a refused
    /// configuration) is its exit status rather than a failed test.
    pub fn try_start(self) -> Result<Binary, std::process::ExitStatus> {
        let bin = std::env::var_os("CERTLINE_TEST_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_certline")));
        let stderr = match self.log_file {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("log file"),
            ),
            None => Stdio::inherit(),
        };
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg(self.listen.to_string())
            .arg("--data")
            .arg(self.data_dir)
            .env("RUST_LOG", self.rust_log)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let derived = match (self.config, super::postgres::selected() && !self.sled_only) {
            // CERTLINE_TEST_STORE=postgres: the same file plus a [store] section, unless the
            // test chose a store itself.
            (config, true) => {
                let derived = Derived {
                    source: config.map(Path::to_path_buf),
                    file: self.data_dir.with_extension("postgres.toml"),
                    data_dir: self.data_dir.to_path_buf(),
                };
                match derived.write() {
                    Some(file) => {
                        cmd.arg("--config").arg(file);
                        Some(derived)
                    }
                    None => {
                        cmd.arg("--config").arg(config.unwrap());
                        None
                    }
                }
            }
            (Some(config), false) => {
                cmd.arg("--config").arg(config);
                None
            }
            (None, false) => None,
        };
        let mut child = cmd.spawn().expect("spawn certline");
        // A thread reads stdout so the wait can time out, and keeps draining it afterwards
        // so the server never blocks on a full pipe.
        let stdout = child.stdout.take().expect("stdout");
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if lines_tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let mut admin = None;
        // `admin listening on` (with [admin]) comes before `listening on`, which is last.
        let addr = loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let line = match lines.recv_timeout(wait) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(child.wait().expect("wait for certline"));
                }
                Err(e) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    panic!(
                        "certline did not say where it listens within {START_TIMEOUT:?} ({e}); exit status {status:?}"
                    );
                }
            };
            if let Some(a) = line.strip_prefix("admin listening on ") {
                admin = Some(a.parse().expect("admin address"));
            } else if let Some(a) = line.strip_prefix("listening on ") {
                break a.parse().expect("address");
            } else {
                panic!("unexpected line from certline: {line:?}");
            }
        };
        Ok(Binary {
            child,
            addr,
            admin,
            data_dir: self.data_dir.to_path_buf(),
            derived,
        })
    }
}

/// The configuration file to start the binary of `data_dir` with when a test starts it
/// itself (not through [`Launch`]): `config` as it is, or under
/// `CERTLINE_TEST_STORE=postgres` (and without a `[store]` of its own) a copy with the
/// `[store]` section that puts that data directory on PostgreSQL.
pub fn store_config(config: &Path, data_dir: &Path) -> PathBuf {
    if !super::postgres::selected() {
        return config.to_path_buf();
    }
    let derived = Derived {
        source: Some(config.to_path_buf()),
        file: data_dir.with_extension("postgres.toml"),
        data_dir: data_dir.to_path_buf(),
    };
    derived
        .write()
        .map_or_else(|| config.to_path_buf(), Path::to_path_buf)
}

/// Under `CERTLINE_TEST_STORE=postgres`, the binary reads a copy of the test's configuration
/// file with a `[store]` section added (certline has no include or environment override for
/// its store, and the test's own file must stay as the test wrote it). The copy is written
/// again from the test's file before every reload ([`Binary::sighup`]), so a test that edits
/// its file and sends SIGHUP reloads exactly what it wrote, on the same store.
struct Derived {
    /// The test's file (`None`: no `--config`, only the `[store]` section).
    source: Option<PathBuf>,
    /// The copy the binary was started with.
    file: PathBuf,
    data_dir: PathBuf,
}

impl Derived {
    /// Writes the copy; `None` when the test's file chose a store itself (used as it is).
    fn write(&self) -> Option<&Path> {
        let text = self
            .source
            .as_ref()
            .map(|c| std::fs::read_to_string(c).expect("read the config file"))
            .unwrap_or_default();
        if text.contains("[store]") {
            return None;
        }
        let section = super::postgres::store_section_for(&self.data_dir);
        // Written aside and renamed: a reload never reads half a file.
        let partial = self.file.with_extension("toml.partial");
        std::fs::write(&partial, format!("{text}\n{section}")).unwrap();
        std::fs::rename(&partial, &self.file).unwrap();
        Some(&self.file)
    }
}

/// The real `certline` binary in a child process, killed (by its own pid) when dropped.
pub struct Binary {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin listener, when the configuration has `[admin]`.
    pub admin: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// The configuration copy it reads under `CERTLINE_TEST_STORE=postgres`.
    derived: Option<Derived>,
}

impl Binary {
    /// SIGHUP (reload), after bringing the configuration copy the binary reads under
    /// `CERTLINE_TEST_STORE=postgres` up to date with the test's file.
    pub fn sighup(&self) {
        if let Some(derived) = &self.derived {
            derived.write();
        }
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) },
            0,
            "kill -HUP {}",
            self.child.id()
        );
    }

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
        let mut launch = Launch::new(data_dir).logged(rust_log, log_file);
        launch.config = config;
        launch.start()
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
