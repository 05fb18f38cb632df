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
use support::acme_setup::{acme_state, acme_toml, eab_pool, seed_validated, wait_acme};
use support::admin::{Admin, admin_toml};
use support::bridge_setup::{register, sectigo_section};
use support::client::{call, list_all, new_key};
use support::postgres::TestSchema;
use support::scm_sim::ScmSim;
use support::server::{Binary, Launch};
use support::smtp_sink::{Captured, SmtpSink};
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

/// [`migrate`] with stderr on a terminal (a pseudo-terminal from util-linux's `script`), as an
/// operator runs it: the progress shows. Its stdout holds both streams.
fn migrate_on_a_terminal(from: &Path, to: &Path, config: &Path) -> Output {
    let command = format!(
        "'{}' migrate --from '{}' --to '{}' --config '{}'",
        env!("CARGO_BIN_EXE_certline"),
        from.display(),
        to.display(),
        config.display()
    );
    Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .output()
        .expect("run certline migrate under script(1)")
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

/// The admin listener's public URL in [`link_tokens_and_acme_records_move_with_the_rest`]
/// (certline refuses `[smtp]` with links under a loopback address); the mailed links are
/// followed at each server's real admin address.
const PUBLIC_URL: &str = "https://certline.example.org/";

/// The mailed link of `kind` (`confirm` or `revoke`) in `mail`, as a path under the admin root.
fn link_path(mail: &Captured, kind: &str) -> String {
    let link = mail
        .links()
        .into_iter()
        .find(|l| l.contains(&format!("/link/{kind}/")))
        .unwrap_or_else(|| panic!("no {kind} link in {}", mail.data));
    link.strip_prefix(PUBLIC_URL)
        .unwrap_or_else(|| panic!("{link} is not under {PUBLIC_URL}"))
        .to_owned()
}

/// Presses a link's button (POST) on the server `admin`; status and page.
async fn press(admin: std::net::SocketAddr, path: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("http://{admin}/{path}"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Link tokens (claims waiting for confirmation, and one used link) and ACME account records
/// move sled → PostgreSQL → sled exactly, and a link mailed before the move confirms its key
/// on either copy (and a used one stays used).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn link_tokens_and_acme_records_move_with_the_rest() {
    let sim = ScmSim::start().await;
    sim.set_eab_pool(&eab_pool(4));
    let a_names: Vec<String> = (0..3).map(|i| format!("a{i}.example.edu")).collect();
    let b_names = vec!["b0.example.edu".to_owned()];
    seed_validated(&sim, &a_names);
    seed_validated(&sim, &b_names);
    let sink = SmtpSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let schema = TestSchema::new().await;
    let pw = dir.path().join("pw");
    std::fs::write(&pw, support::scm_sim::PASSWORD).unwrap();
    let config = |name: &str, store: &str| {
        let text = format!(
            "{}{}public_url = \"{PUBLIC_URL}\"\n\n[smtp]\nhost = \"127.0.0.1\"\nport = {}\n\
             tls = \"none\"\nfrom = \"certline <certline@example.org>\"\ntimeout_secs = 10\n{store}",
            acme_toml(&sim, &pw, "require_confirmed_key = false", ""),
            admin_toml(dir.path()),
            sink.addr.port(),
        );
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, text).unwrap();
        file
    };
    let sled_config = config("sled", "\n[store]\nbackend = \"sled\"\n");
    let pg_config = config("postgres", &schema.store_toml("migrated", 300));

    let first = dir.path().join("first");
    let server = Launch::new(&first).config(&sled_config).start();
    let key_a = register(server.addr, &a_names).await;
    let key_b = register(server.addr, &b_names).await;
    for (key, email) in [(&key_a, "a@example.org"), (&key_b, "b@example.org")] {
        let reply = call(
            server.addr,
            &format!("command claim apikey {key} email {email}"),
        )
        .await;
        assert!(reply.is_ok(), "{reply:?}");
    }
    wait_acme(
        server.addr,
        &key_a,
        &a_names,
        "mapped",
        Duration::from_secs(60),
    )
    .await;
    wait_acme(
        server.addr,
        &key_b,
        &b_names,
        "mapped",
        Duration::from_secs(60),
    )
    .await;
    let mails = sink.wait_for(2, Duration::from_secs(30)).await;
    let mail_to = |to: &str| {
        mails
            .iter()
            .find(|m| m.to == [to])
            .unwrap_or_else(|| panic!("no mail to {to}: {mails:?}"))
    };
    let (confirm_a, confirm_b) = (
        link_path(mail_to("a@example.org"), "confirm"),
        link_path(mail_to("b@example.org"), "confirm"),
    );
    // B's link is used before the move: it must stay used after.
    let (code, page) = press(server.admin.unwrap(), &confirm_b).await;
    assert_eq!(code, 200, "{page}");
    let status = |addr, key: &String, domain: &String| {
        let line = format!("command status apikey {key} domain {domain}");
        async move { call(addr, &line).await.data.unwrap() }
    };
    assert!(
        status(server.addr, &key_a, &a_names[0])
            .await
            .contains(" key=unconfirmed ")
    );
    assert!(server.terminate().success());

    let out = migrate_on_a_terminal(&first, Path::new("postgres"), &pg_config);
    assert!(out.status.success(), "{}", text(&out));
    let source = sled_records(&first).await;
    // On a terminal, a bar with the total (counted before the copy).
    assert!(
        text(&out).contains(&format!("/{} records copied", source.len())),
        "{}",
        text(&out)
    );
    let count = |kind: fn(&Item) -> bool| source.iter().filter(|i| kind(i)).count();
    let tokens = count(|i| matches!(i, Item::LinkToken { .. }));
    let used = count(|i| matches!(i, Item::LinkToken { token, .. } if token.used_at.is_some()));
    // A confirm and a revoke link per claim; B's confirm link used.
    assert_eq!((tokens, used), (4, 1), "{source:#?}");
    assert_eq!(count(|i| matches!(i, Item::Acme { .. })), 2, "{source:#?}");
    assert!(
        text(&out).contains("4 link tokens") && text(&out).contains("2 ACME records"),
        "{}",
        text(&out)
    );
    let pg = Store::open_postgres(&schema.config("check", 300))
        .await
        .unwrap();
    assert_eq!(
        records(&pg).await,
        source,
        "PostgreSQL holds what sled held"
    );
    pg.close().await.unwrap();

    let back = dir.path().join("back");
    let out = migrate(Path::new("postgres"), &back, &pg_config);
    assert!(out.status.success(), "{}", text(&out));
    // Not a terminal: no progress, only the summary.
    assert!(out.stderr.is_empty(), "{}", text(&out));
    assert_eq!(sled_records(&back).await, source, "back in sled, unchanged");

    // A's link, mailed before the move, confirms A on each copy; B's stays used.
    for (data, config) in [
        (dir.path().join("on-postgres"), &pg_config),
        (back, &sled_config),
    ] {
        let server = Launch::new(&data).config(config).start();
        let admin = server.admin.unwrap();
        for (key, names) in [(&key_a, &a_names), (&key_b, &b_names)] {
            let (state, _, data) = acme_state(server.addr, key, &names[0]).await;
            assert_eq!(state, "mapped", "{data}");
        }
        let (code, page) = press(admin, &confirm_b).await;
        assert_eq!(code, 410, "{page}");
        assert!(
            status(server.addr, &key_a, &a_names[0])
                .await
                .contains(" key=unconfirmed ")
        );
        let (code, page) = press(admin, &confirm_a).await;
        assert_eq!(code, 200, "{page}");
        assert!(page.contains("Key confirmed"), "{page}");
        let line = status(server.addr, &key_a, &a_names[0]).await;
        assert!(line.contains(" key=confirmed "), "{line}");
        assert!(server.terminate().success());
    }
}
