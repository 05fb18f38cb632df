//! Pebble (an ACME test CA) on loopback for the certbot end-to-end tests, optionally
//! requiring External Account Binding, following shared/reference/certbot-pebble.md.

use super::scripts::run_bounded;
use super::wait::wait_until_blocking;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The installed tool's path, or a panic that says how to install it.
pub fn require(tool: &str) -> PathBuf {
    for dir in ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin"] {
        let path = Path::new(dir).join(tool);
        if path.exists() {
            return path;
        }
    }
    panic!("{tool} is not installed; run .ci/install-e2e-deps");
}

/// Pebble on loopback, killed by its pid when dropped.
pub struct Pebble {
    child: Child,
    pub acme_port: u16,
    /// The CA that signed Pebble's listener certificate (certbot's `REQUESTS_CA_BUNDLE`).
    pub ca_bundle: PathBuf,
    log: PathBuf,
}

impl Pebble {
    /// Pebble without External Account Binding.
    pub fn start(dir: &Path) -> Pebble {
        Pebble::start_with_eab(dir, &[])
    }

    /// Pebble that requires EAB with these (kid, base64url HMAC key) pairs when `eab` is not
    /// empty (`externalAccountBindingRequired`, `externalAccountMACKeys`).
    pub fn start_with_eab(dir: &Path, eab: &[(String, String)]) -> Pebble {
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
  "externalAccountBindingRequired": {required}, "externalAccountMACKeys": {keys}}}}}"#,
                cert = dir.join("server.pem").display(),
                key = dir.join("server.key").display(),
                required = !eab.is_empty(),
                keys = serde_json::Value::Object(
                    eab.iter()
                        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                        .collect()
                ),
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
        let mut pebble = Pebble {
            child,
            acme_port,
            ca_bundle: ca,
            log: dir.join("pebble.log"),
        };
        wait_until_blocking(Duration::from_secs(20), "pebble listening", || {
            // A bad configuration (an EAB key with padding, say) makes Pebble exit at once.
            if let Some(status) = pebble.child.try_wait().expect("pebble status") {
                panic!("pebble exited ({status}): {}", pebble.log());
            }
            TcpStream::connect(("127.0.0.1", acme_port)).map_err(|e| (e, pebble.log()))
        });
        pebble
    }

    /// The ACME directory URL.
    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// Pebble's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
