//! `/readyz` on the PostgreSQL store (README: "`/readyz` writes through the store, so it
//! reports not ready while the database takes no writes"): over real sockets, with a TCP
//! proxy between certline and PostgreSQL whose path the test cuts and restores (the shared
//! server itself keeps running). While cut, `/readyz` answers 503 with the reason and a
//! registration is refused, not acknowledged; once restored, both work again without a
//! restart, and what was acknowledged before the cut is still there.
//!
//! Always on PostgreSQL, whatever `CERTLINE_TEST_STORE` says (tests/admin_api.rs has the
//! sled counterpart).

mod support;

use certline::Config;
use std::time::Duration;
use support::admin::admin_toml;
use support::client::{call, list_all, new_key};
use support::postgres::{SERVER, TestSchema, url};
use support::server::InProcess;
use support::tcp_proxy::TcpProxy;
use support::wait::{done_or, wait_until};

/// How long certline may take to notice either way (its probe runs once a second; a new
/// connection gives up after 5 s).
const LIMIT: Duration = Duration::from_secs(30);

async fn readyz(http: &reqwest::Client, url: &str) -> (u16, String) {
    match http.get(url).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_is_not_ready_while_postgres_takes_no_writes_and_ready_again_after() {
    let schema = TestSchema::new().await;
    let proxy = TcpProxy::start(SERVER.parse().unwrap()).await;
    // The test server's URL, with the proxy's address for the server's.
    let through_proxy = url().replace(SERVER, &proxy.addr.to_string());
    assert_ne!(through_proxy, url(), "the test URL names {SERVER}");
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("postgres-url");
    std::fs::write(&url_file, &through_proxy).unwrap();
    let text = format!(
        "listen = \"127.0.0.1:0\"\n{}\n[store]\nbackend = \"postgres\"\n[store.postgres]\n\
         url_file = \"{}\"\nschema = \"{}\"\ninstance = \"readyz\"\npool_size = 4\n",
        admin_toml(dir.path()),
        url_file.display(),
        schema.name
    );
    let mut config = Config::from_toml(&text).unwrap();
    config.data_dir = dir.path().join("data");
    let server = InProcess::start_with(config).await;
    let ready_url = format!("http://{}/readyz", server.admin.expect("admin listener"));
    let http = reqwest::Client::new();

    assert_eq!(readyz(&http, &ready_url).await, (200, "ready\n".into()));
    let key = new_key(server.addr).await;
    let add = |domain: &str| format!("command add apikey {key} domain {domain}");
    assert!(call(server.addr, &add("before.example.org")).await.is_ok());

    proxy.cut();
    let why = wait_until(LIMIT, "/readyz 503 while the path is cut", || async {
        let (code, body) = readyz(&http, &ready_url).await;
        done_or(code == 503, (code, body.clone())).map(|()| body)
    })
    .await;
    assert!(why.contains("store not writable"), "{why}");
    assert!(
        why.contains("PostgreSQL"),
        "the reason names the database: {why}"
    );
    // Stays not ready: nothing answers for the database meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(readyz(&http, &ready_url).await.0, 503);
    // A registration is refused rather than acknowledged.
    let refused = call(server.addr, &add("during.example.org")).await;
    assert!(!refused.is_ok(), "{refused:?}");

    proxy.restore();
    wait_until(LIMIT, "/readyz 200 once the path is back", || async {
        let (code, body) = readyz(&http, &ready_url).await;
        done_or(code == 200, (code, body))
    })
    .await;
    assert!(call(server.addr, &add("after.example.org")).await.is_ok());
    let mut domains = list_all(server.addr, &key).await.domains;
    domains.sort();
    assert_eq!(
        domains,
        ["after.example.org", "before.example.org"],
        "what was acknowledged is there; the refused registration is not"
    );
    server.stop().await;
}
