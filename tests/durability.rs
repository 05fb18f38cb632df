//! `ok` means on disk: restarts, concurrency and kill -9 against the real binary.

mod support;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use support::client::{call, list_all, new_key};
use support::server::{Binary, Launch};

/// Every domain registered under `key`.
async fn all_domains(addr: SocketAddr, key: &str) -> BTreeSet<String> {
    list_all(addr, key).await.domains.into_iter().collect()
}

fn config_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("certline.toml");
    std::fs::write(
        &path,
        "[rate_limit]\napikey_per_minute = 100000\napikey_burst = 100000\n",
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn a_graceful_restart_keeps_keys_claims_and_domains() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Binary::start(&data, None);
    let key = new_key(server.addr).await;
    assert!(
        call(
            server.addr,
            &format!("command claim apikey {key} email a@b.org")
        )
        .await
        .is_ok()
    );
    assert!(
        call(
            server.addr,
            &format!("command add apikey {key} domain a.example.org")
        )
        .await
        .is_ok()
    );
    assert!(server.terminate().success(), "SIGTERM exits cleanly");

    let server = Binary::start(&data, None);
    assert_eq!(
        call(
            server.addr,
            &format!("command claim apikey {key} email A@b.org")
        )
        .await
        .text,
        "api key already claimed"
    );
    assert_eq!(
        all_domains(server.addr, &key).await,
        BTreeSet::from(["a.example.org".to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_clients_then_kill_9_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = config_file(dir.path());
    let server = Binary::start(&data, Some(&config));
    let addr = server.addr;

    let mut tasks = Vec::new();
    for client in 0..200 {
        tasks.push(tokio::spawn(async move {
            let key = new_key(addr).await;
            let mut acked = Vec::new();
            for i in 0..5 {
                let domain = format!("c{client}-{i}.example.org");
                let reply = call(addr, &format!("command add apikey {key} domain {domain}")).await;
                assert!(reply.is_ok(), "{reply:?}");
                acked.push(domain);
            }
            (key, acked)
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.push(t.await.unwrap());
    }
    // Every client has its `ok`: kill at once, with no chance to flush on the way out.
    server.kill9();

    let server = Binary::start(&data, Some(&config));
    let mut total = 0;
    for (key, domains) in &acked {
        let stored = all_domains(server.addr, key).await;
        let want: BTreeSet<String> = domains.iter().cloned().collect();
        assert_eq!(stored, want, "key {key}");
        total += stored.len();
    }
    assert_eq!(total, 1000);
}

/// The write-ahead log fills more than one 8 MiB segment, the server is killed with no
/// checkpoint since (they run every 30 s), and the restart replays every segment in order.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_after_the_log_spans_several_segments_replays_them_all() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = config_file(dir.path());
    // No checkpoint may run during the load, however slow the machine: the timer's 30 s were
    // within reach of a debug build on a busy machine, and a checkpoint deletes the segments
    // it covers, leaving one (and this test proving nothing).
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[durability]\ncheckpoint_ms = 3600000\n");
    std::fs::write(&config, text).unwrap();
    let server = Launch::new(&data).config(&config).sled().start();
    let addr = server.addr;
    let key = new_key(addr).await;
    // About 300 bytes of log per registration: 36,000 of them make about 10 MiB.
    let mut tasks = Vec::new();
    for conn in 0..8 {
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut lines = String::new();
            for i in 0..4_500 {
                lines.push_str(&format!(
                    "command add apikey {key} domain s{conn}-{i}.example.org\n"
                ));
            }
            stream.write_all(lines.as_bytes()).await.unwrap();
            stream.shutdown().await.unwrap();
            let mut all = String::new();
            stream.read_to_string(&mut all).await.unwrap();
            assert_eq!(all.matches("status ok 200 domain added").count(), 4_500);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let segments = std::fs::read_dir(data.join("wal"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("wal-")
        })
        .count();
    assert!(
        segments >= 2,
        "the log fits one segment ({segments}): the test proves nothing"
    );
    server.kill9();

    let server = Launch::new(&data).config(&config).sled().start();
    let stored = all_domains(server.addr, &key).await;
    assert_eq!(stored.len(), 36_000);
    for conn in 0..8 {
        for i in [0, 2_249, 4_499] {
            assert!(stored.contains(&format!("s{conn}-{i}.example.org")));
        }
    }
}

/// Relaxed mode acknowledges before the disk, and the log is written every
/// `relaxed_flush_ms`: once a few intervals have passed, a kill -9 loses nothing.
#[tokio::test(flavor = "multi_thread")]
async fn relaxed_mode_writes_the_log_on_its_timer() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("relaxed.toml");
    std::fs::write(
        &config,
        "[durability]\nmode = \"relaxed\"\nrelaxed_flush_ms = 50\n\
         [rate_limit]\napikey_per_minute = 100000\napikey_burst = 100000\n",
    )
    .unwrap();
    let server = Binary::start(&data, Some(&config));
    let key = new_key(server.addr).await;
    let mut want = BTreeSet::new();
    for i in 0..50 {
        let domain = format!("r{i}.example.org");
        let reply = call(
            server.addr,
            &format!("command add apikey {key} domain {domain}"),
        )
        .await;
        assert!(reply.is_ok(), "{reply:?}");
        want.insert(domain);
    }
    // Generous: 30 flush intervals.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    server.kill9();
    let server = Binary::start(&data, Some(&config));
    assert_eq!(all_domains(server.addr, &key).await, want);
}
