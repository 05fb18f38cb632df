//! Socket activation (issue 19): certline serves on listening sockets passed the way systemd
//! passes them (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`, descriptors from 3 on), so a
//! restart under load refuses no connection: while no certline process runs, the sockets
//! stay open in the launcher (systemd's role) and new connections wait in the accept queue.
//!
//! The launcher is this test: it binds the line and admin sockets once, and starts each
//! certline process with copies of them as fds 3 and 4, through `sh -c 'LISTEN_PID=$$ exec
//! …'` so `LISTEN_PID` is the pid certline runs as (as systemd sets it).

mod support;

use socket2::{Domain, Socket, Type};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::admin::{Admin, admin_toml};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A listening socket on a free loopback port with a deep accept queue.
fn listen() -> TcpListener {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    socket.listen(4096).unwrap();
    socket.into()
}

/// The launcher's sockets.
struct Sockets {
    line: TcpListener,
    admin: TcpListener,
}

impl Sockets {
    fn line_addr(&self) -> SocketAddr {
        self.line.local_addr().unwrap()
    }

    fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().unwrap()
    }
}

/// Starts certline on the launcher's sockets, as systemd would; `names` is
/// `LISTEN_FDNAMES` (none: unnamed, told apart by port). Waits for its `listening on` line
/// and returns it (empty if certline ended first).
fn activate(
    sockets: &Sockets,
    config: &Path,
    data: &Path,
    names: Option<&str>,
    stderr: Stdio,
) -> (Child, String) {
    let fds: [RawFd; 2] = [sockets.line.as_raw_fd(), sockets.admin.as_raw_fd()];
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_certline"))
        .args(["serve", "--config"])
        .arg(support::server::store_config(config, data))
        .arg("--data")
        .arg(data)
        .env("LISTEN_FDS", "2")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(stderr);
    match names {
        Some(names) => cmd.env("LISTEN_FDNAMES", names),
        None => cmd.env_remove("LISTEN_FDNAMES"),
    };
    // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2), on
    // descriptors this process owns.
    unsafe {
        cmd.pre_exec(move || {
            // Move both out of the way first, so placing one cannot overwrite the other.
            let mut high = [0; 2];
            for (h, fd) in high.iter_mut().zip(fds) {
                *h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
                if *h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (target, h) in [3, 4].into_iter().zip(high) {
                // dup2's copy does not close on exec: certline inherits it.
                if libc::dup2(h, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn certline");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    // `admin listening on …` comes first; `listening on …` (the line protocol) last.
    let mut line = String::new();
    loop {
        line.clear();
        if stdout.read_line(&mut line).unwrap() == 0 || line.starts_with("listening on ") {
            break;
        }
    }
    // Keep reading stdout so certline never blocks on it.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    (child, line.trim().to_owned())
}

fn terminate(child: &mut Child) {
    let pid = child.id() as i32;
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "certline exited with {status}");
}

fn config(dir: &Path, sockets: &Sockets) -> std::path::PathBuf {
    let path = dir.join("certline.toml");
    let admin = admin_toml(dir).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{}\"", sockets.admin_addr()),
    );
    let text = format!(
        "listen = \"{}\"\n[durability]\nmode = \"relaxed\"\n{admin}",
        sockets.line_addr()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    answered: AtomicU64,
    /// `status error 503 shutting down`: the old process's answer to a request it read
    /// after its shutdown began (an answer, not a drop).
    shutting_down: AtomicU64,
    refused: AtomicU64,
    /// Connected, but closed or reset without a reply.
    dropped: AtomicU64,
}

/// One connection, one `command ping`, one reply, over and over until `stop`.
async fn client(addr: SocketAddr, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let mut stream = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(e) => panic!("connect: {e}"),
        };
        let mut reply = Vec::new();
        let read = async {
            stream.write_all(b"command ping\n").await?;
            let mut chunk = [0u8; 256];
            while !reply.ends_with(b"\n") {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                reply.extend_from_slice(&chunk[..n]);
            }
            std::io::Result::Ok(())
        };
        let outcome = tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .expect("a reply or a close within 20 s");
        match (outcome, reply.as_slice()) {
            (Ok(()), b"status ok 200 pong\n") => &tally.answered,
            (Ok(()), b"status error 503 shutting down\n") => &tally.shutting_down,
            _ => &tally.dropped,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_under_load_refuses_no_connection() {
    let dir = tempfile::tempdir().unwrap();
    let sockets = Sockets {
        line: listen(),
        admin: listen(),
    };
    let config = config(dir.path(), &sockets);
    let data = dir.path().join("data");
    let (mut first, line) = activate(
        &sockets,
        &config,
        &data,
        Some("line:admin"),
        Stdio::inherit(),
    );
    assert_eq!(line, format!("listening on {}", sockets.line_addr()));
    let admin = Admin::new(sockets.admin_addr());
    assert_eq!(
        admin.get("/api/keys").await.0,
        200,
        "the admin socket is served"
    );

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..16)
        .map(|_| tokio::spawn(client(sockets.line_addr(), tally.clone(), stop.clone())))
        .collect();
    let wait_for = |n: u64| {
        let tally = tally.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            let start = tally.answered.load(Ordering::Relaxed);
            while tally.answered.load(Ordering::Relaxed) < start + n {
                assert!(Instant::now() < deadline, "the clients got no answers");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_for(200).await;

    // The restart: stop, and (after a pause with no certline at all) start the next one,
    // this time with unnamed sockets, told apart by port.
    tokio::task::block_in_place(|| terminate(&mut first));
    let before_restart = tally.answered.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut second, line) =
        tokio::task::block_in_place(|| activate(&sockets, &config, &data, None, Stdio::inherit()));
    assert_eq!(line, format!("listening on {}", sockets.line_addr()));
    wait_for(200).await;
    assert_eq!(
        admin.get("/api/keys").await.0,
        200,
        "the admin socket is served again"
    );

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    tokio::task::block_in_place(|| terminate(&mut second));
    let t = |c: &AtomicU64| c.load(Ordering::Relaxed);
    eprintln!(
        "answered {} ({} before the restart), 503 shutting down {}, refused {}, dropped {}",
        t(&tally.answered),
        before_restart,
        t(&tally.shutting_down),
        t(&tally.refused),
        t(&tally.dropped)
    );
    assert_eq!(
        t(&tally.refused),
        0,
        "connections refused across the restart"
    );
    assert_eq!(t(&tally.dropped), 0, "connections closed without a reply");
    assert!(
        t(&tally.answered) > before_restart,
        "the new process answered"
    );
}

#[test]
fn a_passed_socket_that_fits_neither_port_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let sockets = Sockets {
        line: listen(),
        admin: listen(),
    };
    // The configuration names other ports than the sockets have.
    let path = dir.path().join("certline.toml");
    std::fs::write(
        &path,
        format!("listen = \"127.0.0.1:1\"\n{}", admin_toml(dir.path())),
    )
    .unwrap();
    let data = dir.path().join("data");
    let (child, line) = activate(&sockets, &path, &data, None, Stdio::piped());
    assert_eq!(line, "", "certline must not start");
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "the socket systemd passed on {} (unknown) is neither `listen` (port 1)",
            sockets.line_addr()
        )),
        "{stderr}"
    );
}
