//! A full disk and failed writes (issue 18): certline refuses what it cannot store, never shows
//! or logs a refused change, and takes writes again by itself once the disk has room.
//!
//! The first test runs the real binary on a small tmpfs that really fills up; mounting needs
//! root, which CI has. The second injects a failed log write in-process and watches from
//! another connection and from the admin API that the refused change is never visible,
//! before or after a restart.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::admin::{Admin, admin_toml};
use support::client::{PATIENCE, call, list_all, new_key, read_reply};
use support::server::{Binary, InProcess, test_config_sled};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size_mib: u64) -> Self {
        std::fs::create_dir_all(path).unwrap();
        run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_mib}m"),
                "certline-test",
            ])
            .arg(path));
        Self {
            path: path.to_path_buf(),
        }
    }

    /// Grows (or shrinks) the file system in place, as an operator adding space would.
    fn resize(&self, size_mib: u64) {
        run(Command::new("mount")
            .args(["-o", &format!("remount,size={size_mib}m")])
            .arg(&self.path));
    }

    fn free_bytes(&self) -> u64 {
        let s = rustix::fs::statvfs(&self.path).unwrap();
        s.f_bavail * s.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn run(cmd: &mut Command) {
    let status = cmd.status().expect("run mount");
    assert!(status.success(), "{cmd:?} failed: {status}");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Sends `domains` as pipelined `add`s on one connection; returns each domain's reply code.
async fn add_pipelined(addr: SocketAddr, key: &str, domains: &[String]) -> Vec<u16> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut lines = String::new();
    for d in domains {
        lines.push_str(&format!("command add apikey {key} domain {d}\n"));
    }
    stream.write_all(lines.as_bytes()).await.unwrap();
    let mut codes = Vec::new();
    let mut text = String::new();
    while codes.len() < domains.len() {
        let reply = read_reply(&mut stream).await;
        assert!(!reply.is_empty(), "connection closed after {codes:?}");
        text.push_str(std::str::from_utf8(&reply).unwrap());
        // read_reply may return several replies at once; take every status line.
        while let Some(end) = text.find('\n') {
            let line: String = text.drain(..=end).collect();
            if let Some(rest) = line.strip_prefix("status ") {
                let code = rest.split(' ').nth(1).unwrap().parse().unwrap();
                codes.push(code);
            }
        }
    }
    codes
}

/// Every domain registered under `key` (the paging contract checked on the way).
async fn all_domains(addr: SocketAddr, key: &str) -> BTreeSet<String> {
    list_all(addr, key).await.domains.into_iter().collect()
}

async fn readyz(admin: SocketAddr) -> (u16, String) {
    let r = reqwest::get(format!("http://{admin}/readyz"))
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The domains named in `audit` log lines for new registrations.
fn audited_domains(log: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(log).unwrap();
    text.lines()
        .filter(|l| l.contains("audit") && l.contains("new-domain"))
        .filter_map(|l| {
            let start = l.find("DomainAdded { domain: \"")? + "DomainAdded { domain: \"".len();
            let end = l[start..].find('"')?;
            Some(l[start..start + end].to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "mounts a tmpfs, so it needs root; .ci/run runs it (as root) with --include-ignored"]
async fn a_disk_that_fills_up_refuses_writes_and_takes_them_again_once_it_has_room() {
    assert!(
        is_root(),
        "this test mounts a tmpfs and needs root: run it as root (.ci/run does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&dir.path().join("disk"), 64);
    let data = fs.path.join("data");
    let log = dir.path().join("certline.log");
    let config = dir.path().join("certline.toml");
    std::fs::write(
        &config,
        format!(
            "[durability]\ncheckpoint_ms = 1000\n\
             [rate_limit]\napikey_per_minute = 100000\napikey_burst = 100000\n{}",
            admin_toml(dir.path())
        ),
    )
    .unwrap();
    let server = Binary::start_logged(&data, Some(&config), "info", Some(&log));
    let admin = server.admin.unwrap();
    assert_eq!(readyz(admin).await.0, 200);
    let key = new_key(server.addr).await;

    // Another tenant of the disk takes most of it: certline's store stays a little above
    // the minimum it keeps free (two log segments, 16 MiB).
    let filler = fs.path.join("filler");
    let mut fill = std::fs::File::create(&filler).unwrap();
    let chunk = vec![7u8; 1 << 20];
    while fs.free_bytes() > (16 + 4) << 20 {
        std::io::Write::write_all(&mut fill, &chunk).unwrap();
    }
    drop(fill);

    // A steady stream of registrations fills the rest.
    let mut acked = BTreeSet::new();
    let mut refused = BTreeSet::new();
    let started = Instant::now();
    for batch in 0.. {
        let domains: Vec<String> = (0..200)
            .map(|i| format!("b{batch}-{i}.example.org"))
            .collect();
        let codes = add_pipelined(server.addr, &key, &domains).await;
        for (domain, code) in domains.into_iter().zip(&codes) {
            match code {
                200 => acked.insert(domain),
                500 => refused.insert(domain),
                other => panic!("{domain}: unexpected code {other}"),
            };
        }
        if codes.iter().all(|&c| c == 500) {
            break;
        }
        assert!(
            started.elapsed() < 6 * PATIENCE,
            "the disk never filled ({} MiB free)",
            fs.free_bytes() >> 20
        );
    }
    assert!(!acked.is_empty());
    let (status, why) = readyz(admin).await;
    assert_eq!(status, 503, "{why}");
    assert!(
        why.contains("store not writable") && why.contains("free space"),
        "{why}"
    );
    // Reads still work, and show none of the refused registrations.
    let listed = all_domains(server.addr, &key).await;
    assert_eq!(
        listed, acked,
        "list shows exactly the acknowledged registrations"
    );
    let some_refused = refused.iter().next().unwrap();
    let status = call(
        server.addr,
        &format!("command status apikey {key} domain {some_refused}"),
    )
    .await;
    assert_eq!(status.code(), 404, "{status:?}");
    // Still full a few retries later: still refused, still alive.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let late = "late.example.org".to_owned();
    assert_eq!(
        add_pipelined(server.addr, &key, std::slice::from_ref(&late)).await,
        [500]
    );
    refused.insert(late);

    // The operator grows the file system; certline notices by itself.
    fs.resize(256);
    let started = Instant::now();
    let mut after = 0;
    loop {
        let domain = format!("after-{after}.example.org");
        after += 1;
        match add_pipelined(server.addr, &key, std::slice::from_ref(&domain)).await[..] {
            [200] => {
                acked.insert(domain);
                break;
            }
            [500] => {
                refused.insert(domain);
            }
            ref other => panic!("unexpected {other:?}"),
        }
        assert!(started.elapsed() < PATIENCE, "writes were not taken again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, why) = readyz(admin).await;
    assert_eq!(status, 200, "{why}");
    let more: Vec<String> = (0..50).map(|i| format!("more-{i}.example.org")).collect();
    assert!(
        add_pipelined(server.addr, &key, &more)
            .await
            .iter()
            .all(|&c| c == 200)
    );
    acked.extend(more);

    // Audit lines are written by their own thread once their round is on disk (and in the
    // audit trail's file): after an acknowledgement, not before it. Wait for them, so that a
    // kill -9 right after the last acknowledgement does not take the last lines with it (the
    // trail keeps those events either way).
    let started = Instant::now();
    while !audited_domains(&log).is_superset(&acked) {
        assert!(
            started.elapsed() < PATIENCE,
            "acknowledged registrations without an audit line: {:?}",
            acked
                .difference(&audited_domains(&log))
                .take(5)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // kill -9 and a restart: every acknowledged registration is there, no refused one is.
    server.kill9();
    let server = Binary::start_logged(&data, Some(&config), "info", Some(&log));
    let listed = all_domains(server.addr, &key).await;
    let lost: Vec<_> = acked.difference(&listed).take(5).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    let shown: Vec<_> = refused.intersection(&listed).take(5).collect();
    assert!(shown.is_empty(), "refused with 500 but stored: {shown:?}");
    assert_eq!(listed.len(), acked.len());
    drop(server);

    // The audit log names exactly the registrations that were stored.
    assert_eq!(audited_domains(&log), acked);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("the store stopped taking writes").count(),
        1,
        "one line when writes stop, not one per request"
    );
    assert_eq!(text.matches("the store takes writes again").count(), 1);
}

/// How many log writes fail in [`a_change_whose_log_write_failed_is_never_visible`].
const ATTEMPTS: usize = 3;

/// Log writes fail while another connection keeps asking for the domains: it never sees a
/// refused registration, and neither does anyone after a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_change_whose_log_write_failed_is_never_visible() {
    let dir = tempfile::tempdir().unwrap();
    // The embedded store's write-ahead log, whatever CERTLINE_TEST_STORE says (PostgreSQL
    // has no log of certline's to fail: tests/readyz_postgres.rs cuts its connections).
    let mut config = test_config_sled(&dir.path().join("data"));
    config.admin = certline::app::Config::from_toml(&admin_toml(dir.path()))
        .unwrap()
        .admin;
    let s = InProcess::start_with_sled(config.clone()).await;
    let key = new_key(s.addr).await;
    // Every refused domain is named `refused-N.example.org`; the readers look for the prefix.
    let domain = "refused-";

    // The reader pipelines `status` and `list` as fast as the server answers.
    let stop = tokio_util::sync::CancellationToken::new();
    let reader = {
        let (addr, key, stop) = (s.addr, key.clone(), stop.clone());
        tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let mut lines = String::new();
            for n in 0..ATTEMPTS {
                lines.push_str(&format!(
                    "command status apikey {key} domain {domain}{n}.example.org\n"
                ));
            }
            lines.push_str(&format!("command list apikey {key}\n"));
            let mut seen = 0usize;
            let mut rounds = 0usize;
            while !stop.is_cancelled() {
                stream.write_all(lines.as_bytes()).await.unwrap();
                let mut got = String::new();
                while got.matches("status ").count() < ATTEMPTS + 1 {
                    got.push_str(std::str::from_utf8(&read_reply(&mut stream).await).unwrap());
                }
                if got.contains(domain) {
                    seen += 1;
                }
                rounds += 1;
            }
            (seen, rounds)
        })
    };
    // The operator's inventory asks as fast as the admin API answers.
    let admin_reader = {
        let (admin, stop) = (Admin::new(s.admin.unwrap()), stop.clone());
        tokio::spawn(async move {
            let (mut seen, mut rounds) = (0usize, 0usize);
            while !stop.is_cancelled() {
                let (status, body) = admin.get("/api/domains?limit=1000").await;
                assert!(status == 200 || status == 500, "{status} {body}");
                if status == 200 && body.contains(domain) {
                    seen += 1;
                }
                rounds += 1;
            }
            (seen, rounds)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    for attempt in 0..ATTEMPTS {
        s.store
            .group_commit()
            .expect("sled has group commit")
            .inject_flush_failures(1);
        let add = format!("command add apikey {key} domain {domain}{attempt}.example.org");
        let reply = call(s.addr, &add).await;
        assert_eq!(reply.code(), 500, "{reply:?}");
        // Until the store has mended its log.
        let started = Instant::now();
        while s.store.writable().is_err() {
            assert!(started.elapsed() < PATIENCE, "the store stayed unwritable");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let other = call(
        s.addr,
        &format!("command add apikey {key} domain kept.example.org"),
    )
    .await;
    assert!(other.is_ok(), "{other:?}");
    stop.cancel();
    let (seen, rounds) = reader.await.unwrap();
    assert!(rounds > 10, "the reader hardly ran ({rounds} rounds)");
    assert_eq!(seen, 0, "the refused registration was visible {seen} times");
    let (seen, rounds) = admin_reader.await.unwrap();
    assert!(rounds > 10, "the admin reader hardly ran ({rounds} rounds)");
    assert_eq!(
        seen, 0,
        "the admin API showed the refused registration {seen} times"
    );
    assert!(
        !support::store::audit_trail(&s.store)
            .await
            .iter()
            .any(|e| format!("{:?}", e.kind).contains(domain)),
        "no audit event for the refused registration"
    );
    s.stop().await;

    let s = InProcess::start_with_sled(config).await;
    assert_eq!(
        call(
            s.addr,
            &format!("command status apikey {key} domain {domain}0.example.org")
        )
        .await
        .code(),
        404
    );
    assert_eq!(
        all_domains(s.addr, &key).await,
        BTreeSet::from(["kept.example.org".to_owned()])
    );
    s.stop().await;
}

/// sled cannot be mended in-process after an I/O error: when flushing it fails on a full
/// disk, the store turns fatal (the server exits on that, for systemd to restart it), says
/// why and what to do, and nothing acknowledged is lost: the next start, once there is room,
/// replays the log.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "mounts a tmpfs, so it needs root; .ci/run runs it (as root) with --include-ignored"]
async fn a_database_that_fails_on_a_full_disk_is_fatal_and_the_log_keeps_everything() {
    use certline::apikey::ApiKey;
    use certline::store::{ClaimCaps, DurabilityMode, Store, Timing};
    assert!(
        is_root(),
        "this test mounts a tmpfs and needs root: run it as root (.ci/run does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&dir.path().join("disk"), 48);
    let data = fs.path.join("data");
    let timing = Timing {
        relaxed_flush: Duration::from_secs(1),
        checkpoint: Duration::from_secs(3600),
    };
    let hash = ApiKey::generate().hash();
    let ip = "127.0.0.1".parse().unwrap();
    let domains: Vec<certline::domain::Domain> = (0..2000)
        .map(|i| format!("d{i}.example.org").parse().unwrap())
        .collect();
    {
        let store = Store::open(&data, DurabilityMode::Durable, timing).unwrap();
        store
            .create_key(&hash, None, &ClaimCaps::default(), ip, 0)
            .await
            .unwrap();
        for d in &domains {
            store.add_domain(&hash, d, ip, 0).await.unwrap();
        }
        store.commit().await.unwrap();
        // Another tenant fills the disk to the last byte.
        let mut filler = std::fs::File::create(fs.path.join("filler")).unwrap();
        let chunk = vec![7u8; 64 << 10];
        while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
        drop(filler);
        // A clean shutdown must flush sled, which now cannot write.
        let error = store.close().await.unwrap_err().to_string();
        assert!(store.fatal().is_cancelled(), "{error}");
        assert!(
            error.contains("exits for its supervisor") && error.contains("free space"),
            "{error}"
        );
        assert!(store.writable().is_err());
        let refused: certline::domain::Domain = "refused.example.org".parse().unwrap();
        assert!(store.add_domain(&hash, &refused, ip, 0).await.is_err());
    }
    // Room again: the next start replays the log.
    std::fs::remove_file(fs.path.join("filler")).unwrap();
    let started = Instant::now();
    let store = loop {
        // sled's threads let go of the file lock a moment after the handle is dropped.
        match Store::open(&data, DurabilityMode::Durable, timing) {
            Ok(store) => break store,
            Err(certline::store::StoreError::Open { .. }) if started.elapsed() < PATIENCE => {
                tokio::time::sleep(Duration::from_millis(25)).await
            }
            Err(e) => panic!("reopening: {e}"),
        }
    };
    assert_eq!(
        support::store::key_domains(&store, &hash).await.len(),
        domains.len()
    );
    assert_eq!(store.key(&hash).await.unwrap().unwrap().domain_count, 2000);
    store.close().await.unwrap();
}
