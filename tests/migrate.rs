//! `certline migrate` (issue 16): a deployment moves from its data directory to PostgreSQL
//! and back, and the servers started on each copy serve exactly what the first one did.
//!
//! Real binaries, a real PostgreSQL (127.0.0.1:5432, a schema of the test's own), the SCM
//! simulator for the bridge's records. Besides what the servers show (every key's pages,
//! every domain's status line, the admin API's domain and key listings), every record of
//! each store is read back through the library and compared, the audit trail included.

mod support;

use certline::store::transfer::{ExportCursor, Item};
use certline::store::{DurabilityMode, Store, Timing};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use support::admin::{Admin, admin_toml};
use support::bridge_setup::{register, sectigo_section};
use support::client::{call, list_all, new_key};
use support::postgres::TestSchema;
use support::scm_sim::ScmSim;
use support::server::{Binary, Launch};
use support::wait::{done_or, wait_until};

/// What a running server shows of the deployment.
#[derive(Debug, PartialEq)]
struct View {
    /// Every key's `list` pages, raw.
    pages: Vec<Vec<String>>,
    /// Every domain's `status` reply, raw.
    statuses: Vec<String>,
    /// `GET /api/domains` and `GET /api/keys`, every page.
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

/// Every record of a store, the mail jobs in one order whatever the backend's.
async fn records(store: &Store) -> Vec<Item> {
    records_in_pages(store, 97).await
}

/// [`records`], read `page` at a time.
async fn records_in_pages(store: &Store, page: usize) -> Vec<Item> {
    let mut out = Vec::new();
    let mut cursor = Some(ExportCursor::start());
    while let Some(at) = cursor {
        let (items, next) = store.export(&at, page).await.unwrap();
        out.extend(items);
        cursor = next;
    }
    out.sort_by_key(|i| match i {
        Item::Mail { due, hash, .. } => (i.section(), Some((*due, hash.0))),
        _ => (i.section(), None),
    });
    out
}

/// The records of the data directory `dir` (no server may run on it).
async fn sled_records(dir: &Path) -> Vec<Item> {
    // sled lets go of its file lock a moment after the last process using it exited.
    let mut tries = 0;
    let store = loop {
        let timing = Timing {
            relaxed_flush: Duration::from_secs(1),
            checkpoint: Duration::from_secs(30),
        };
        match Store::open(dir, DurabilityMode::Durable, timing) {
            Ok(store) => break store,
            Err(_) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("opening {}: {e}", dir.display()),
        }
    };
    let items = records(&store).await;
    store.close().await.unwrap();
    items
}

fn migrate(from: &Path, to: &Path, config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_certline"))
        .arg("migrate")
        .arg("--from")
        .arg(from)
        .arg("--to")
        .arg(to)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run certline migrate")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

struct Setup {
    dir: tempfile::TempDir,
    schema: TestSchema,
    sim: ScmSim,
}

impl Setup {
    /// A configuration file: the bridge on the simulator, the admin API, and `store`.
    fn config(&self, name: &str, store: &str) -> PathBuf {
        let pw = self.dir.path().join("pw");
        std::fs::write(&pw, support::scm_sim::PASSWORD).unwrap();
        let settings = r#"max_concurrency = 8
allowed_suffixes = ["example.edu"]
create_missing = true
org_id = 2622
require_confirmed_key = false"#;
        let text = format!(
            "[rate_limit]\napikey_per_minute = 100000\napikey_burst = 100000\n{}{}{store}",
            sectigo_section(&self.sim, &pw, settings),
            admin_toml(self.dir.path()),
        );
        let file = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, text).unwrap();
        file
    }

    fn sled_config(&self) -> PathBuf {
        self.config("sled", "\n[store]\nbackend = \"sled\"\n")
    }

    fn postgres_config(&self) -> PathBuf {
        self.config("postgres", &self.schema.store_toml("migrated", 300))
    }

    fn start(&self, data: &Path, config: &Path) -> Binary {
        Launch::new(data).config(config).start()
    }
}

/// Waits until every domain's status says `sectigo=synced`: the bridge's records then rest
/// (rechecked in hours), so the servers started on the copies show the same.
async fn wait_synced(server: &Binary, keys: &[String], domains: &[(usize, String)]) {
    wait_until(Duration::from_secs(120), "every domain synced", || async {
        let mut left = 0;
        let mut example = String::new();
        for (k, d) in domains {
            let reply = call(
                server.addr,
                &format!("command status apikey {} domain {d}", keys[*k]),
            )
            .await;
            let data = reply.data.unwrap_or_default();
            if !data.contains("sectigo=synced") {
                left += 1;
                example = data;
            }
        }
        done_or(left == 0, format!("{left} not synced, e.g. {example}"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deployment_moves_to_postgres_and_back_with_every_record() {
    let s = Setup {
        dir: tempfile::tempdir().unwrap(),
        schema: TestSchema::new().await,
        sim: ScmSim::start().await,
    };
    let (sled_config, pg_config) = (s.sled_config(), s.postgres_config());
    let first = s.dir.path().join("first");
    let server = s.start(&first, &sled_config);

    // Four keys with 120 domains each (some removed again), one claimed key with none, one
    // key claimed and holding domains shared with another key.
    let mut keys = Vec::new();
    let mut domains = Vec::new();
    for k in 0..4 {
        let names: Vec<String> = (0..120).map(|i| format!("h{i}.k{k}.example.edu")).collect();
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
    wait_synced(&server, &keys, &domains).await;
    let before = view(&server, &keys, &domains).await;
    assert_eq!(before.keys.len(), 6);
    // Removed domains keep their record and bridge state (certline never deletes them).
    assert_eq!(before.inventory.len(), 4 * 120);

    // A running server holds its data directory: migrate says to stop it.
    let busy = migrate(&first, Path::new("postgres"), &pg_config);
    assert!(!busy.status.success(), "{}", text(&busy));
    assert!(text(&busy).contains("stop it first"), "{}", text(&busy));
    assert!(server.terminate().success());

    // To PostgreSQL.
    let out = migrate(&first, Path::new("postgres"), &pg_config);
    assert!(out.status.success(), "{}", text(&out));
    let source = sled_records(&first).await;
    let audit = source
        .iter()
        .filter(|i| matches!(i, Item::Audit { .. }))
        .count();
    let bridges = source
        .iter()
        .filter(|i| matches!(i, Item::Bridge { .. }))
        .count();
    assert_eq!(bridges, 4 * 120);
    assert!(audit > 4 * 120 + 2, "{audit} audit events");
    assert!(
        text(&out).contains(&format!("migrated {} records", source.len())),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains(&format!("{audit} audit events")),
        "{}",
        text(&out)
    );
    let pg = Store::open_postgres(&s.schema.config("check", 300))
        .await
        .unwrap();
    assert_eq!(
        records(&pg).await,
        source,
        "PostgreSQL holds what sled held"
    );
    // Pages end anywhere, in every section, and go on where they ended.
    assert_eq!(records_in_pages(&pg, 1).await, source);
    pg.close().await.unwrap();

    // A server on PostgreSQL serves the same.
    let server = s.start(&s.dir.path().join("unused"), &pg_config);
    let on_postgres = view(&server, &keys, &domains).await;
    assert_eq!(on_postgres, before);
    assert!(server.terminate().success());

    // And back, into a new data directory.
    let back = s.dir.path().join("back");
    let out = migrate(Path::new("postgres"), &back, &pg_config);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sled_records(&back).await, source, "back in sled, unchanged");
    let server = s.start(&back, &sled_config);
    assert_eq!(view(&server, &keys, &domains).await, before);
    // The copy takes writes, with its audit trail continuing after the copied events.
    let key = &keys[0];
    let reply = call(
        server.addr,
        &format!("command add apikey {key} domain later.k0.example.edu"),
    )
    .await;
    assert!(reply.is_ok(), "{reply:?}");
    assert!(server.terminate().success());
    let after = sled_records(&back).await;
    let last_seq = |items: &[Item]| {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Audit { seq, .. } => Some(*seq),
                _ => None,
            })
            .max()
    };
    assert!(last_seq(&after) > last_seq(&source));

    // Neither direction writes into a store that holds records.
    let again = migrate(&first, Path::new("postgres"), &pg_config);
    assert!(!again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("is not empty"), "{}", text(&again));
    let again = migrate(Path::new("postgres"), &back, &pg_config);
    assert!(!again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("is not empty"), "{}", text(&again));
    assert_eq!(
        sled_records(&back).await,
        after,
        "the refused copy wrote nothing"
    );
}
