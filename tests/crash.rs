//! Crash test (protocol.md §8, ARCHITECTURE.md §4): a `200` to a write means the write is on disk.
//!
//! The real binary runs in durable mode (the default). 32 connections register distinct
//! domains as fast as the server answers, recording every domain that got `status ok 200`;
//! at a random moment the server is killed with SIGKILL (no shutdown code runs). It is
//! restarted on the same data directory, and every acknowledged domain must be listed under
//! the key (paging with `offset`/`next`, protocol.md §7), with the key's `total=` equal to
//! the number of domains listed. Five rounds per run, on one data directory, so later rounds
//! also check that recovery after a crash leaves a store that survives the next one.

mod support;

use rand::Rng;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::client::{self, PATIENCE};
use support::server::Binary;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const ROUNDS: usize = 5;
const WRITERS: usize = 32;

/// Registers `d{round}-{writer}-{i}.example.org` for i = 0, 1, … on one connection until the
/// connection dies, recording each acknowledged domain.
async fn writer(
    addr: SocketAddr,
    key: String,
    round: usize,
    id: usize,
    acked: Arc<Mutex<Vec<String>>>,
) {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return;
    };
    for i in 0.. {
        let domain = format!("d{round}-{id}-{i}.example.org");
        let line = format!("command add apikey {key} domain {domain}\n");
        if stream.write_all(line.as_bytes()).await.is_err() {
            return;
        }
        let reply = read_reply_or_close(&mut stream).await;
        if reply.is_empty() {
            return; // killed
        }
        let reply = String::from_utf8(reply).expect("reply is UTF-8");
        if reply == format!("data {domain}\nstatus ok 200 domain added\n") {
            acked.lock().unwrap().push(domain);
        } else {
            // A partial reply can only be the kill cutting it short; never an error code.
            assert!(
                !reply.contains("status error"),
                "unexpected reply {reply:?} for {domain}"
            );
            return;
        }
    }
}

/// One reply, or whatever arrived before the connection died (empty if nothing did).
async fn read_reply_or_close(stream: &mut TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if client::reply_complete(&buf) {
            return buf;
        }
        match tokio::time::timeout(PATIENCE, stream.read(&mut chunk)).await {
            Err(_) => panic!("no reply and no close within {PATIENCE:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return buf,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_registration_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Binary::start(&data, None);
    let key = client::new_key(server.addr).await;
    let mut acked_total: BTreeSet<String> = BTreeSet::new();
    let mut rng = rand::rng();
    for round in 0..ROUNDS {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let mut writers = tokio::task::JoinSet::new();
        for id in 0..WRITERS {
            writers.spawn(writer(server.addr, key.clone(), round, id, acked.clone()));
        }
        let kill_after = Duration::from_millis(rng.random_range(150..1500));
        tokio::time::sleep(kill_after).await;
        server.kill9();
        while let Some(r) = writers.join_next().await {
            r.expect("writer task");
        }
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        eprintln!(
            "round {round}: killed after {kill_after:?}, {} registrations acknowledged",
            acked.len()
        );
        acked_total.extend(acked);

        server = Binary::start(&data, None);
        let listed: BTreeSet<String> = client::list_all(server.addr, &key)
            .await
            .domains
            .into_iter()
            .collect();
        let lost: Vec<_> = acked_total.difference(&listed).collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} acknowledged registrations lost after kill -9, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        // Only domains this test sent can be there.
        assert!(
            listed
                .iter()
                .all(|d| d.starts_with('d') && d.ends_with(".example.org"))
        );
    }
    assert!(
        !acked_total.is_empty(),
        "no registration was acknowledged in {ROUNDS} rounds"
    );
    drop(server);
}
