//! TLS to PostgreSQL (issue 16): `sslmode` as libpq defines it, against the real server every
//! development and CI machine of this project runs at 127.0.0.1:5432 with `ssl = on`
//! (Debian's default: the self-signed "snakeoil" certificate for `localhost`, whose file the
//! server names in `ssl_cert_file`).
//!
//! What a session is, is asked of the server (`pg_stat_ssl`), for the connections the store
//! opened (found by an `application_name` of the test's own): the pool's and the listener's.
//! Without a reachable PostgreSQL with TLS on these tests fail, naming what is missing.

mod support;

use certline::apikey::ApiKey;
use certline::store::ClaimCaps;
use certline::store::postgres::{PgStore, PostgresConfig};
use std::path::PathBuf;
use support::postgres::{SERVER, TestSchema};

/// A store configuration on the test's schema whose URL is `url` (written to a file).
fn config_with_url(schema: &TestSchema, name: &str, url: &str) -> PostgresConfig {
    let file = schema.dir.path().join(format!("url-{name}"));
    std::fs::write(&file, url).unwrap();
    let mut config = schema.config(name, 300);
    config.url_file = Some(file);
    config
}

/// A unique application name, to find the store's sessions in `pg_stat_ssl`.
fn app_name(what: &str) -> String {
    format!("certline_tls_{what}_{:08x}", rand::random::<u32>())
}

/// Whether every session of `app` is encrypted, and how many there are.
async fn sessions(schema: &TestSchema, app: &str) -> (i64, bool) {
    let client = schema.client().await;
    let row = client
        .query_one(
            "SELECT count(*), coalesce(bool_and(s.ssl), false)
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name = $1",
            &[&app],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// The store works: a write and a read through it.
async fn works(store: &PgStore) {
    let hash = ApiKey::generate().hash();
    store
        .create_key(
            &hash,
            None,
            &ClaimCaps::default(),
            "192.0.2.1".parse().unwrap(),
            1,
        )
        .await
        .unwrap();
    assert!(store.key(&hash).await.unwrap().is_some());
}

/// The certificate the server presents, as the server names it (`ssl_cert_file`).
async fn server_certificate(schema: &TestSchema) -> PathBuf {
    let client = schema.client().await;
    let ssl: String = client.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    assert_eq!(
        ssl, "on",
        "PostgreSQL at {SERVER} has ssl = off; these tests need TLS on (Debian's default)"
    );
    let file: String = client
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .unwrap()
        .get(0);
    let path = PathBuf::from(file);
    assert!(
        std::fs::metadata(&path).is_ok(),
        "the server's certificate {} is not readable here",
        path.display()
    );
    path
}

async fn connect(config: &PostgresConfig) -> Result<PgStore, String> {
    PgStore::connect(config).await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn sslmode_require_encrypts_every_session() {
    let schema = TestSchema::new().await;
    let app = app_name("require");
    let url = format!("postgres://postgres@{SERVER}/test?sslmode=require&application_name={app}");
    let store = connect(&config_with_url(&schema, "a", &url)).await.unwrap();
    works(&store).await;
    let (count, encrypted) = sessions(&schema, &app).await;
    assert!(
        count >= 2,
        "the pool's and the listener's sessions: {count}"
    );
    assert!(encrypted, "a session of sslmode=require is not encrypted");
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sslmode_disable_still_connects_in_clear() {
    let schema = TestSchema::new().await;
    let app = app_name("disable");
    let url = format!("postgres://postgres@{SERVER}/test?sslmode=disable&application_name={app}");
    let store = connect(&config_with_url(&schema, "a", &url)).await.unwrap();
    works(&store).await;
    let (count, encrypted) = sessions(&schema, &app).await;
    assert!(count >= 1);
    assert!(!encrypted, "sslmode=disable made an encrypted session");
    store.close().await.unwrap();
}

/// verify-full with a CA that did not sign the server's certificate is refused, with what
/// to fix and without the password.
#[tokio::test(flavor = "multi_thread")]
async fn verify_full_refuses_a_certificate_its_ca_did_not_sign() {
    let schema = TestSchema::new().await;
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let ca = schema.dir.path().join("other-ca.pem");
    std::fs::write(&ca, other.cert.pem()).unwrap();
    let url = "postgres://postgres:pw-hidden-42@localhost:5432/test?sslmode=verify-full";
    let mut config = config_with_url(&schema, "a", url);
    config.ca_file = Some(ca.clone());
    let refused = connect(&config)
        .await
        .err()
        .expect("connected with the wrong CA");
    assert!(refused.contains("ca_file"), "{refused}");
    assert!(refused.contains("certificate"), "{refused}");
    assert!(!refused.contains("pw-hidden-42"), "{refused}");
    // The same through sslrootcert in the URL.
    let url = format!(
        "postgres://postgres:pw-hidden-42@localhost:5432/test?sslmode=verify-full&sslrootcert={}",
        ca.display()
    );
    let refused = connect(&config_with_url(&schema, "b", &url))
        .await
        .err()
        .expect("connected with the wrong CA");
    assert!(refused.contains("ca_file"), "{refused}");
    assert!(!refused.contains("pw-hidden-42"), "{refused}");
}

/// With the server's own (self-signed) certificate as the CA: verify-full connects by the
/// name the certificate holds and refuses an address it does not; verify-ca, which checks the
/// chain only, connects by either.
#[tokio::test(flavor = "multi_thread")]
async fn verify_full_and_verify_ca_with_the_servers_own_certificate() {
    let schema = TestSchema::new().await;
    let cert = server_certificate(&schema).await;
    let app = app_name("full");
    let url = format!(
        "postgres://postgres@localhost:5432/test?sslmode=verify-full&application_name={app}&sslrootcert={}",
        cert.display()
    );
    let store = connect(&config_with_url(&schema, "a", &url))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "verify-full to localhost with {} as the CA: {e} (the server's certificate \
                 must name localhost)",
                cert.display()
            )
        });
    works(&store).await;
    let (count, encrypted) = sessions(&schema, &app).await;
    assert!(
        count >= 2 && encrypted,
        "{count} sessions, encrypted: {encrypted}"
    );
    store.close().await.unwrap();

    // By address: the certificate names localhost only.
    let mut by_address = config_with_url(
        &schema,
        "b",
        &format!("postgres://postgres@{SERVER}/test?sslmode=verify-full"),
    );
    by_address.ca_file = Some(cert.clone());
    let refused = connect(&by_address)
        .await
        .err()
        .expect("verify-full by address");
    assert!(refused.contains("does not name the host"), "{refused}");
    let app = app_name("ca");
    let mut chain_only = config_with_url(
        &schema,
        "c",
        &format!("postgres://postgres@{SERVER}/test?sslmode=verify-ca&application_name={app}"),
    );
    chain_only.ca_file = Some(cert);
    let store = connect(&chain_only).await.unwrap();
    works(&store).await;
    assert!(
        sessions(&schema, &app).await.1,
        "verify-ca session not encrypted"
    );
    store.close().await.unwrap();
}
