//! PostgreSQL for tests: the server every development and CI machine of this project runs at
//! 127.0.0.1:5432 (user postgres, trust authentication, database `test`), one schema per test.
//!
//! Two ways in:
//! * [`TestSchema`]: a fresh schema for a test that opens stores itself (the store contract,
//!   two instances); dropped when the guard goes, also on a panic.
//! * `CERTLINE_TEST_STORE=postgres`: the suites that start servers ([`super::server`]) run them
//!   on PostgreSQL instead of sled. Each data directory gets its own schema, named after the
//!   directory, so a restart of the "same" server finds its data again; schemas whose
//!   directory is gone (earlier runs) are dropped when a test process first asks for one.
//!
//! Without a reachable server every test that needs it fails, naming the address: never a skip.

use certline::store::postgres::PostgresConfig;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const SERVER: &str = "127.0.0.1:5432";

/// The test server's URL; `CERTLINE_TEST_POSTGRES_URL` may point elsewhere.
pub fn url() -> String {
    std::env::var("CERTLINE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| format!("postgres://postgres@{SERVER}/test"))
}

/// Whether the server-starting suites run on PostgreSQL (`CERTLINE_TEST_STORE=postgres`).
pub fn selected() -> bool {
    match std::env::var("CERTLINE_TEST_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("sled") | Err(_) => false,
        Ok(other) => panic!("CERTLINE_TEST_STORE={other}: use sled (the default) or postgres"),
    }
}

fn unreachable(e: impl std::fmt::Display) -> ! {
    panic!(
        "PostgreSQL at {} is unreachable: {e}. The tests need it running with trust \
         authentication for local connections; start it (e.g. `service postgresql start`)",
        url()
    )
}

/// Runs `sql` on the test server from any context (Drop, sync test helpers, inside a
/// runtime): on a thread with a runtime of its own.
pub fn execute_blocking(sql: String) -> Result<Vec<tokio_postgres::SimpleQueryMessage>, String> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            client.simple_query(&sql).await.map_err(|e| e.to_string())
        })
    })
    .join()
    .unwrap_or_else(|_| Err("the SQL thread panicked".into()))
}

/// Writes the test server's URL to a file (the store reads its URL from a file or a
/// variable, never from the configuration itself) and returns the file.
fn url_file(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("postgres-url");
    std::fs::write(&file, url()).unwrap();
    file
}

/// A schema of its own for one test, dropped when the guard goes (also on a panic).
pub struct TestSchema {
    pub name: String,
    pub dir: tempfile::TempDir,
}

impl TestSchema {
    pub async fn new() -> Self {
        let name = format!("t_{:016x}", rand::random::<u64>());
        // Reach the server first, so that a missing server fails here, by name.
        let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| unreachable(e));
        tokio::spawn(connection);
        client.simple_query("SELECT 1").await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        url_file(dir.path());
        Self { name, dir }
    }

    /// The store settings for one instance on this schema.
    pub fn config(&self, instance: &str, lease_secs: u64) -> PostgresConfig {
        let mut config = PostgresConfig::from_url_file(self.dir.path().join("postgres-url"));
        config.schema = self.name.clone();
        config.instance = instance.to_owned();
        config.lease_secs = lease_secs;
        config.pool_size = 8;
        config
    }

    /// The `[store]` section of a configuration file for one instance on this schema.
    pub fn store_toml(&self, instance: &str, lease_secs: u64) -> String {
        store_toml(
            &self.dir.path().join("postgres-url"),
            &self.name,
            instance,
            lease_secs,
        )
    }

    /// A plain client on the test's schema, for what the store does not show.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(&format!("SET search_path = {}", self.name))
            .await
            .unwrap();
        client
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let dropped = execute_blocking(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        if let Err(e) = dropped {
            eprintln!("could not drop test schema {}: {e}", self.name);
        }
    }
}

fn store_toml(url_file: &Path, schema: &str, instance: &str, lease_secs: u64) -> String {
    format!(
        "\n[store]\nbackend = \"postgres\"\n\n[store.postgres]\nurl_file = \"{}\"\nschema = \"{schema}\"\ninstance = \"{instance}\"\nlease_secs = {lease_secs}\npool_size = 8\n",
        url_file.display()
    )
}

/// Schemas this process has prepared (a restart of the same server must find its data).
static PREPARED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// The `[store]` section that puts the server of `data_dir` on PostgreSQL, in a schema of its
/// own named after the directory. The first time this process asks for a schema it is made
/// fresh (dropped if an earlier run left it), and schemas of earlier runs whose directory is
/// gone are dropped.
pub fn store_section_for(data_dir: &Path) -> String {
    let path = data_dir.display().to_string();
    let digest = Sha256::digest(path.as_bytes());
    let schema = format!("d_{}", hex::encode(&digest[..8]));
    let mut prepared = PREPARED.lock().unwrap_or_else(|p| p.into_inner());
    let prepared = prepared.get_or_insert_with(|| {
        sweep_stale_schemas();
        HashSet::new()
    });
    if prepared.insert(schema.clone()) {
        let comment = path.replace('\'', "''");
        execute_blocking(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; \
             COMMENT ON SCHEMA {schema} IS '{comment}'"
        ))
        .unwrap_or_else(|e| unreachable(e));
    }
    // Beside the data directory (inside the test's temporary directory), not in it: the
    // directory belongs to the server.
    let url_dir = data_dir.with_extension("postgres");
    store_toml(&url_file(&url_dir), &schema, "test", 300)
}

/// Drops the `d_` schemas whose data directory (their comment) no longer exists.
fn sweep_stale_schemas() {
    let rows = execute_blocking(
        "SELECT n.nspname, coalesce(obj_description(n.oid, 'pg_namespace'), '') \
         FROM pg_namespace n WHERE n.nspname LIKE 'd\\_%'"
            .into(),
    )
    .unwrap_or_else(|e| unreachable(e));
    for row in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = row {
            let (Some(name), Some(dir)) = (row.get(0), row.get(1)) else {
                continue;
            };
            if !Path::new(dir).exists() {
                let _ = execute_blocking(format!("DROP SCHEMA IF EXISTS {name} CASCADE"));
            }
        }
    }
}
