//! `certline backup` / `certline restore` (issue 16): an online backup of a running server on
//! the embedded store, restored into a new data directory.
//!
//! Real binaries over real sockets: the server, the CLI that streams the backup from its
//! admin API, the CLI that restores it, and a server started on the restored directory.
//! Pinned to sled (the online backup is the embedded store's; PostgreSQL answers with what
//! to use instead, which the last test checks).

mod support;

use certline::apikey::ApiKey;
use certline::store::transfer::{ExportCursor, Item};
use certline::store::{AuditKind, DurabilityMode, Store, Timing};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::admin::{Admin, TOKEN, admin_toml};
use support::bridge_setup::{register, sectigo_section};
use support::client::{call, list_all, new_key};
use support::postgres::TestSchema;
use support::scm_sim::ScmSim;
use support::server::{Binary, Launch};
use support::smtp_sink::SmtpSink;
use support::wait::{done_or, wait_until};

const SLED: &str = "\n[store]\nbackend = \"sled\"\n";

/// `certline ARGS` with the admin token in the environment.
fn certline(args: &[&std::ffi::OsStr], token: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_certline"))
        .args(args)
        .env("CERTLINE_ADMIN_TOKEN", token)
        .env_remove("CERTLINE_ADMIN_URL")
        .output()
        .expect("run certline")
}

fn backup(server: &Binary, file: &Path, token: &str) -> Output {
    let url = format!("http://{}", server.admin.expect("admin listener"));
    certline(
        &[
            "backup".as_ref(),
            "--admin-url".as_ref(),
            url.as_ref(),
            file.as_os_str(),
        ],
        token,
    )
}

fn restore(file: &Path, data: &Path) -> Output {
    certline(
        &[
            "restore".as_ref(),
            file.as_os_str(),
            "--data".as_ref(),
            data.as_os_str(),
        ],
        TOKEN,
    )
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A configuration file named `name` in `dir` holding `sections` and the admin API.
fn config(dir: &Path, name: &str, sections: &str) -> PathBuf {
    let text = format!(
        "[rate_limit]\napikey_per_minute = 1000000\napikey_burst = 1000000\n{sections}{}",
        admin_toml(dir)
    );
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    file
}

/// Every record of the data directory `dir` (no server may run on it), mail jobs in one
/// order.
async fn sled_records(dir: &Path) -> Vec<Item> {
    let mut tries = 0;
    let store = loop {
        let timing = Timing {
            relaxed_flush: Duration::from_secs(1),
            checkpoint: Duration::from_secs(30),
        };
        match Store::open(dir, DurabilityMode::Durable, timing) {
            Ok(store) => break store,
            // sled lets go of its file lock a moment after the process using it exited.
            Err(_) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("opening {}: {e}", dir.display()),
        }
    };
    let mut out = Vec::new();
    let mut cursor = Some(ExportCursor::start());
    while let Some(at) = cursor {
        let (items, next) = store.export(&at, 500).await.unwrap();
        out.extend(items);
        cursor = next;
    }
    store.close().await.unwrap();
    out
}

/// What a running server shows of the deployment.
#[derive(Debug, PartialEq)]
struct View {
    pages: Vec<Vec<String>>,
    statuses: Vec<String>,
    inventory: Vec<Value>,
    keys: Vec<Value>,
}

async fn view(server: &Binary, keys: &[String], domains: &[(usize, String)]) -> View {
    let admin = Admin::new(server.admin.expect("admin listener"));
    let mut pages = Vec::new();
    for key in keys {
        pages.push(list_all(server.addr, key).await.pages);
    }
    let mut statuses = Vec::new();
    for (k, d) in domains {
        let reply = call(
            server.addr,
            &format!("command status apikey {} domain {d}", keys[*k]),
        )
        .await;
        statuses.push(format!("{reply:?}"));
    }
    View {
        pages,
        statuses,
        inventory: admin.domains("").await,
        keys: admin.all_pages("/api/keys", "", "keys").await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_of_a_running_server_restores_to_the_same_service() {
    let dir = tempfile::tempdir().unwrap();
    let sim = ScmSim::start().await;
    let sink = SmtpSink::start().await;
    let pw = dir.path().join("pw");
    std::fs::write(&pw, support::scm_sim::PASSWORD).unwrap();
    let settings = r#"max_concurrency = 8
allowed_suffixes = ["example.edu"]
create_missing = true
org_id = 2622
require_confirmed_key = false"#;
    let smtp = format!(
        "\n[smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"certline <certline@example.org>\"\ntimeout_secs = 10\n",
        sink.addr.port()
    );
    let file = config(
        dir.path(),
        "sled",
        &format!("{}{smtp}{SLED}", sectigo_section(&sim, &pw, settings)),
    );
    // Claim links are mailed under the admin listener's public URL.
    let mut text_now = std::fs::read_to_string(&file).unwrap();
    text_now.push_str("public_url = \"https://certline.example.org/\"\n");
    std::fs::write(&file, text_now).unwrap();
    let first = dir.path().join("first");
    let server = Launch::new(&first).sled().config(&file).start();

    // Three keys with 80 domains each (some removed again), two claimed keys (link tokens,
    // mails), one of them sharing a domain with another key.
    let mut keys = Vec::new();
    let mut domains = Vec::new();
    for k in 0..3 {
        let names: Vec<String> = (0..80).map(|i| format!("h{i}.k{k}.example.edu")).collect();
        keys.push(register(server.addr, &names).await);
        domains.extend(names.into_iter().map(|d| (k, d)));
    }
    for (k, d) in domains.iter().filter(|(_, d)| d.starts_with("h7.")) {
        let reply = call(
            server.addr,
            &format!("command remove apikey {} domain {d}", keys[*k]),
        )
        .await;
        assert!(reply.is_ok(), "{reply:?}");
    }
    domains.retain(|(_, d)| !d.starts_with("h7."));
    let claimed = new_key(server.addr).await;
    let reply = call(
        server.addr,
        &format!("command claim apikey {claimed} email Owner@Example.org"),
    )
    .await;
    assert!(reply.is_ok(), "{reply:?}");
    keys.push(claimed);
    let sharing = register(server.addr, &["h1.k0.example.edu".to_owned()]).await;
    let reply = call(
        server.addr,
        &format!("command claim apikey {sharing} email other@example.org"),
    )
    .await;
    assert!(reply.is_ok(), "{reply:?}");
    keys.push(sharing);
    domains.push((keys.len() - 1, "h1.k0.example.edu".to_owned()));
    let mails = sink.wait_for(2, Duration::from_secs(30)).await;
    wait_until(Duration::from_secs(120), "every domain synced", || async {
        let mut left = 0;
        for (k, d) in &domains {
            let reply = call(
                server.addr,
                &format!("command status apikey {} domain {d}", keys[*k]),
            )
            .await;
            if !reply.data.unwrap_or_default().contains("sectigo=synced") {
                left += 1;
            }
        }
        done_or(left == 0, format!("{left} not synced"))
    })
    .await;
    let before = view(&server, &keys, &domains).await;

    let saved = dir.path().join("nightly.backup");
    let out = backup(&server, &saved, TOKEN);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("backed up"), "{}", text(&out));
    // No temporary file is left beside it.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(server.terminate().success());
    let source = sled_records(&first).await;
    let count = |f: fn(&Item) -> bool| source.iter().filter(|i| f(i)).count();
    assert_eq!(count(|i| matches!(i, Item::Bridge { .. })), 3 * 80);
    assert!(count(|i| matches!(i, Item::Audit { .. })) > 3 * 80);
    assert_eq!(count(|i| matches!(i, Item::LinkToken { .. })), 4);
    assert!(
        text(&out).contains(&format!("backed up {} records", source.len())),
        "{}",
        text(&out)
    );

    let restored = dir.path().join("restored");
    let out = restore(&saved, &restored);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("restored {} records", source.len())),
        "{}",
        text(&out)
    );
    assert_eq!(
        sled_records(&restored).await,
        source,
        "the restored store holds every record, the audit trail included"
    );
    let server = Launch::new(&restored).sled().config(&file).start();
    assert_eq!(view(&server, &keys, &domains).await, before);
    // A mailed claim link works on the restored server.
    let admin = server.admin.unwrap();
    let link = mails[0]
        .links()
        .into_iter()
        .find(|l| l.contains("/link/confirm/"))
        .expect("a confirm link");
    let path = link
        .strip_prefix("https://certline.example.org/")
        .expect("under public_url");
    let page = reqwest::get(format!("http://{admin}/{path}"))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("<form method=\"post\">")
    );
    assert!(server.terminate().success());
}

/// One acknowledged operation of a writer.
struct Op {
    domain: String,
    add: bool,
    sent: Instant,
    acked: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_concurrent_writers_keeps_every_acknowledged_write_and_no_half_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path(), "sled", SLED);
    let server = Launch::new(&dir.path().join("data"))
        .sled()
        .config(&file)
        .start();
    let addr = server.addr;
    // Enough records that reading them takes a while.
    let mut base = Vec::new();
    for k in 0..4 {
        let names: Vec<String> = (0..500).map(|i| format!("b{i}.k{k}.example.org")).collect();
        base.push((register(addr, &names).await, names));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6 {
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let key = new_key(addr).await;
            let mut ops = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                // Add one, and now and then remove one added two steps earlier.
                let (domain, add) = if i % 3 == 2 {
                    (format!("w{}.k{w}.example.org", i - 2), false)
                } else {
                    (format!("w{i}.k{w}.example.org"), true)
                };
                let verb = if add { "add" } else { "remove" };
                let sent = Instant::now();
                let reply = call(
                    addr,
                    &format!("command {verb} apikey {key} domain {domain}"),
                )
                .await;
                assert!(reply.is_ok(), "{reply:?}");
                ops.push(Op {
                    domain,
                    add,
                    sent,
                    acked: Instant::now(),
                });
                i += 1;
            }
            (key, ops)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let saved = dir.path().join("busy.backup");
    let started = Instant::now();
    let out = {
        let server_admin = server.admin;
        let saved = saved.clone();
        tokio::task::spawn_blocking(move || {
            let url = format!("http://{}", server_admin.unwrap());
            certline(
                &[
                    "backup".as_ref(),
                    "--admin-url".as_ref(),
                    url.as_ref(),
                    saved.as_os_str(),
                ],
                TOKEN,
            )
        })
        .await
        .unwrap()
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut written = Vec::new();
    for w in writers {
        written.push(w.await.unwrap());
    }
    assert!(out.status.success(), "{}", text(&out));
    // Writes arrived while the store was read, and the backup carries them.
    let during = String::from_utf8_lossy(&out.stdout)
        .split("; ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no change count in {}", text(&out)));
    assert!(during > 0, "{}", text(&out));
    let total_ops: usize = written.iter().map(|(_, ops)| ops.len()).sum();
    assert!(total_ops > 60, "{total_ops} writes");
    assert!(server.terminate().success());

    let restored = dir.path().join("restored");
    let out = restore(&saved, &restored);
    assert!(out.status.success(), "{}", text(&out));
    let server = Launch::new(&restored).sled().config(&file).start();

    // Every write acknowledged before the backup began is there; a domain whose last
    // operation was acknowledged before it and had none after is as that operation left it.
    let mut checked = 0;
    for (key, ops) in &written {
        let listed: BTreeSet<String> = list_all(server.addr, key)
            .await
            .domains
            .into_iter()
            .collect();
        let mut last: BTreeMap<&str, (bool, bool)> = BTreeMap::new();
        for op in ops {
            let settled = op.acked < started;
            let entry = last.entry(op.domain.as_str()).or_insert((op.add, true));
            *entry = (op.add, entry.1 && settled);
        }
        for op in ops.iter().filter(|op| op.sent >= started) {
            if let Some(entry) = last.get_mut(op.domain.as_str()) {
                entry.1 = false;
            }
        }
        for (domain, (added, settled)) in last {
            if settled {
                checked += 1;
                assert_eq!(
                    listed.contains(domain),
                    added,
                    "{domain}: acknowledged before the backup as {}",
                    if added { "added" } else { "removed" }
                );
            }
        }
    }
    assert!(checked > 30, "{checked} domains settled before the backup");
    for (key, names) in &base {
        let listed = list_all(server.addr, key).await.domains;
        assert_eq!(listed.len(), names.len());
    }

    // No half of a write: each key's count is its listed domains (list_all checks `total`),
    // the admin API's count per key agrees, and every holder entry has its domain and key.
    let admin = Admin::new(server.admin.unwrap());
    let key_views = admin.all_pages("/api/keys", "", "keys").await;
    let inventory = admin.domains("").await;
    let mut held: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in &inventory {
        for holder in row["keys"].as_array().unwrap() {
            held.entry(holder["id"].as_str().unwrap().to_owned())
                .or_default()
                .insert(row["domain"].as_str().unwrap().to_owned());
        }
    }
    let all_keys: Vec<&String> = written
        .iter()
        .map(|(k, _)| k)
        .chain(base.iter().map(|(k, _)| k))
        .collect();
    for key in all_keys {
        let id = ApiKey::parse(key).unwrap().hash().id();
        let listed: BTreeSet<String> = list_all(server.addr, key)
            .await
            .domains
            .into_iter()
            .collect();
        let view = key_views
            .iter()
            .find(|v| v["id"] == id.as_str())
            .unwrap_or_else(|| panic!("key {id} missing from /api/keys"));
        assert_eq!(view["domains"].as_u64(), Some(listed.len() as u64), "{id}");
        assert_eq!(held.remove(&id).unwrap_or_default(), listed, "{id}");
    }
    assert!(held.is_empty(), "holders of unknown keys: {held:?}");
    let listings = {
        let mut out = Vec::new();
        for (key, _) in &written {
            out.push(list_all(server.addr, key).await.domains);
        }
        out
    };
    assert!(server.terminate().success());

    // One point in each writer's history: its audit events in the restored trail are the
    // first k of its operations, in order, and its domains are what those k left. (The
    // trail is read after the entries; a fuzzy copy without the changes made during it
    // would hold events for writes whose entries it missed.)
    let records = sled_records(&restored).await;
    for ((key, ops), listed) in written.iter().zip(&listings) {
        let id = ApiKey::parse(key).unwrap().hash().id();
        let events: Vec<(String, bool)> = records
            .iter()
            .filter_map(|i| match i {
                Item::Audit { event, .. } if event.key_id == id => match &event.kind {
                    AuditKind::DomainAdded { domain } => Some((domain.clone(), true)),
                    AuditKind::DomainRemoved { domain } => Some((domain.clone(), false)),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        let k = events.len();
        let history: Vec<(String, bool)> = ops
            .iter()
            .take(k)
            .map(|op| (op.domain.clone(), op.add))
            .collect();
        assert_eq!(
            events, history,
            "{id}: the trail is not a prefix of the writes"
        );
        let before_start = ops.iter().filter(|op| op.acked < started).count();
        assert!(
            k >= before_start,
            "{id}: {k} events, {before_start} writes acknowledged before the backup"
        );
        let mut state = BTreeSet::new();
        for (domain, add) in &history {
            if *add {
                state.insert(domain.clone());
            } else {
                state.remove(domain);
            }
        }
        let listed: BTreeSet<String> = listed.iter().cloned().collect();
        assert_eq!(
            listed, state,
            "{id}: its domains are not what its first {k} writes left"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_backups_busy_targets_and_wrong_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path(), "sled", SLED);
    let data = dir.path().join("data");
    let server = Launch::new(&data).sled().config(&file).start();
    let names: Vec<String> = (0..50).map(|i| format!("d{i}.example.org")).collect();
    let key = register(server.addr, &names).await;

    // A wrong token: 401, and no file.
    let wrong = dir.path().join("wrong.backup");
    let out = backup(&server, &wrong, "not-the-token");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("rejected the token (401)"),
        "{}",
        text(&out)
    );
    assert!(!wrong.exists());
    let response = reqwest::Client::new()
        .get(format!("http://{}/api/backup", server.admin.unwrap()))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let saved = dir.path().join("good.backup");
    let out = backup(&server, &saved, TOKEN);
    assert!(out.status.success(), "{}", text(&out));
    let bytes = std::fs::read(&saved).unwrap();

    // The running server's own directory, and any other non-empty one, are refused.
    for busy in [data.clone(), dir.path().to_path_buf()] {
        let out = restore(&saved, &busy);
        assert!(!out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("is not empty"), "{}", text(&out));
    }

    let damaged = |name: &str, content: &[u8], expect: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let target = dir.path().join(format!("{name}.restored"));
        let out = restore(&path, &target);
        assert!(!out.status.success(), "{name}: {}", text(&out));
        assert!(text(&out).contains(expect), "{name}: {}", text(&out));
        assert!(!target.exists(), "{name}: nothing may be restored");
    };
    damaged("truncated", &bytes[..bytes.len() / 2], "truncated");
    damaged("no-trailer", &bytes[..bytes.len() - 10], "truncated");
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x20;
    damaged("flipped", &flipped, "corrupt");
    let mut longer = bytes.clone();
    longer.extend_from_slice(b"extra");
    damaged("longer", &longer, "corrupt");
    damaged(
        "text",
        b"just some text, not a backup\n",
        "not a certline backup",
    );

    // The intact file restores.
    let restored = dir.path().join("restored");
    let out = restore(&saved, &restored);
    assert!(out.status.success(), "{}", text(&out));
    assert!(server.terminate().success());
    let copy = Launch::new(&restored).sled().config(&file).start();
    assert_eq!(list_all(copy.addr, &key).await.domains.len(), names.len());
    assert!(copy.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_the_backup_route_says_to_use_pg_dump() {
    let dir = tempfile::tempdir().unwrap();
    let schema = TestSchema::new().await;
    let file = config(dir.path(), "pg", &schema.store_toml("backup", 300));
    let server = Launch::new(&dir.path().join("unused"))
        .config(&file)
        .start();
    let admin = Admin::new(server.admin.unwrap());
    let (status, body) = admin.get("/api/backup").await;
    assert_eq!(status, 501, "{body}");
    assert!(body.contains("pg_dump"), "{body}");
    let saved = dir.path().join("pg.backup");
    let out = backup(&server, &saved, TOKEN);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("pg_dump"), "{}", text(&out));
    assert!(!saved.exists());
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_postgresql_too() {
    let dir = tempfile::tempdir().unwrap();
    let sled_config = config(dir.path(), "sled", SLED);
    let server = Launch::new(&dir.path().join("data"))
        .sled()
        .config(&sled_config)
        .start();
    let mut keys = Vec::new();
    let mut domains = Vec::new();
    for k in 0..2 {
        let names: Vec<String> = (0..40).map(|i| format!("p{i}.k{k}.example.org")).collect();
        keys.push(register(server.addr, &names).await);
        domains.extend(names.into_iter().map(|d| (k, d)));
    }
    let reply = call(
        server.addr,
        &format!("command claim apikey {} email owner@example.org", keys[0]),
    )
    .await;
    assert!(reply.is_ok(), "{reply:?}");
    let before = view(&server, &keys, &domains).await;
    let saved = dir.path().join("to-postgres.backup");
    let out = backup(&server, &saved, TOKEN);
    assert!(out.status.success(), "{}", text(&out));
    assert!(server.terminate().success());

    let schema = TestSchema::new().await;
    let pg_config = config(dir.path(), "pg", &schema.store_toml("restored", 300));
    let to_postgres = || {
        certline(
            &[
                "restore".as_ref(),
                saved.as_os_str(),
                "--to".as_ref(),
                "postgres".as_ref(),
                "--config".as_ref(),
                pg_config.as_os_str(),
            ],
            TOKEN,
        )
    };
    let out = to_postgres();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("migrated"), "{}", text(&out));
    let server = Launch::new(&dir.path().join("unused"))
        .config(&pg_config)
        .start();
    assert_eq!(view(&server, &keys, &domains).await, before);
    assert!(server.terminate().success());
    // A schema that holds records is refused.
    let again = to_postgres();
    assert!(!again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("is not empty"), "{}", text(&again));
}
