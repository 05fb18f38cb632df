//! Claim confirmation, the KeyChest way, over real sockets: a claim makes certline send an
//! e-mail through a real SMTP conversation (the sink in tests/support/smtp_sink.rs); its
//! confirm and revoke links, followed over HTTP, change the key; links work once and expire;
//! the caps refuse claims with the documented replies; and with `require_confirmed_key` a
//! domain waits until the confirm link and then reaches Sectigo.

mod support;
use certline::Config;
use certline::apikey::ApiKey;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use support::admin::{Admin, admin_toml};
use support::client::{PATIENCE, call, new_key, request};
use support::scm_sim::{self, ScmSim};
use support::scripts::closed_port;
use support::server::{Binary, InProcess, test_config};
use support::smtp_sink::{Captured, SmtpSink};
use support::wait::{done_or, wait_until};

fn smtp_toml(sink: &SmtpSink) -> String {
    format!(
        "\n[smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"certline <certline@example.org>\"\ntimeout_secs = 10\n",
        sink.addr.port()
    )
}

/// The admin listener's public URL in these tests: what users' browsers would reach it at
/// (certline refuses `[smtp]` with links under a loopback address). The tests check each
/// mailed link starts with it, then follow it at the listener's real address.
const PUBLIC_URL: &str = "https://certline.example.org/";

async fn start(dir: &Path, extra: &str) -> (InProcess, Admin) {
    let base = test_config(&dir.join("data"));
    let admin = format!("{}public_url = \"{PUBLIC_URL}\"\n", admin_toml(dir));
    let mut config = Config::from_toml(&format!("{admin}\n{extra}")).unwrap();
    config.listen = base.listen;
    config.data_dir = base.data_dir;
    config.rate_limit = base.rate_limit;
    let server = InProcess::start_with(config).await;
    let admin = Admin::new(server.admin.expect("admin listener"));
    (server, admin)
}

/// The confirm and revoke links of a captured message, which must be under [`PUBLIC_URL`],
/// rewritten to the admin listener at `admin`.
fn links(message: &Captured, admin: Option<SocketAddr>) -> (String, String) {
    let links = message.links();
    let local = format!("http://{}/", admin.expect("admin listener"));
    let find = |part: &str| {
        let link = links
            .iter()
            .find(|l| l.contains(part))
            .unwrap_or_else(|| panic!("no {part} link in {}", message.data));
        let path = link
            .strip_prefix(PUBLIC_URL)
            .unwrap_or_else(|| panic!("{link} is not under admin.public_url {PUBLIC_URL}"));
        format!("{local}{path}")
    };
    (find("/link/confirm/"), find("/link/revoke/"))
}

/// Follows a link the way a person does: open it (a page with a button), press the button.
async fn follow(link: &str) -> (u16, String) {
    let http = reqwest::Client::new();
    let page = http.get(link).send().await.unwrap();
    assert_eq!(page.status(), 200, "{link}");
    let html = page.text().await.unwrap();
    assert!(html.contains("<form method=\"post\">"), "{html}");
    let r = http.post(link).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_claim_mail_links_confirm_or_revoke_the_key_once() {
    let sink = SmtpSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, _admin) = start(dir.path(), &smtp_toml(&sink)).await;

    // Confirm.
    let key = new_key(server.addr).await;
    let claim = format!("command claim apikey {key} email Ops@Example.org");
    assert_eq!(
        request(server.addr, &format!("{claim}\n")).await,
        "status ok 200 api key claimed\n"
    );
    let mail = sink.wait_for(1, PATIENCE).await.remove(0);
    assert_eq!(mail.to, ["Ops@Example.org"]);
    assert_eq!(mail.from, "certline@example.org");
    assert!(!mail.helo.is_empty());
    assert!(
        mail.data.contains("Subject: Confirm your certline API key"),
        "{}",
        mail.data
    );
    let id = ApiKey::parse(&key).unwrap().hash().id();
    assert!(mail.body().contains(&id), "the mail names the key id");
    assert!(!mail.data.contains(&key), "the mail never carries the key");
    let (confirm, revoke) = links(&mail, server.admin);
    assert!(confirm.starts_with(&format!("http://{}/link/confirm/", server.admin.unwrap())));
    assert!(
        mail.body().contains(&format!("{PUBLIC_URL}link/confirm/")),
        "the mail's links are under admin.public_url"
    );

    let status_line = |key: String| {
        let addr = server.addr;
        async move {
            call(
                addr,
                &format!("command status apikey {key} domain www.example.org"),
            )
            .await
            .data
            .unwrap()
        }
    };
    let add = format!("command add apikey {key} domain www.example.org");
    assert!(call(server.addr, &add).await.is_ok());
    assert!(
        status_line(key.clone())
            .await
            .contains(" key=unconfirmed sectigo=off")
    );
    let (code, page) = follow(&confirm).await;
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains("Key confirmed") && page.contains(&id),
        "{page}"
    );
    let record = server
        .store
        .key(&ApiKey::parse(&key).unwrap().hash())
        .await
        .unwrap()
        .unwrap();
    assert!(record.confirmed_at.is_some());
    assert!(
        status_line(key.clone())
            .await
            .contains(" key=confirmed sectigo=off")
    );
    // Single use.
    let again = reqwest::Client::new().post(&confirm).send().await.unwrap();
    assert_eq!(again.status(), 410);
    assert!(again.text().await.unwrap().contains("used before"));
    // A made-up token is unknown; so is a confirm token on the revoke route.
    let forged = format!("{}{}", &confirm[..confirm.len() - 32], "0".repeat(32));
    assert_eq!(
        reqwest::Client::new()
            .post(&forged)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let crossed = confirm.replace("/link/confirm/", "/link/revoke/");
    assert_eq!(
        reqwest::Client::new()
            .post(&crossed)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    // The revoke link of the same mail still works (KeyChest: either link, once each).
    let (code, page) = follow(&revoke).await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(
        request(server.addr, &format!("{add}\n")).await,
        "status error 403 api key revoked\n"
    );

    // Revoke a second key through `apikey email`, then its confirm link is refused.
    let reply = call(server.addr, "command apikey email dev@example.org").await;
    assert_eq!(reply.text, "api key created and claimed");
    let second = reply.data.unwrap();
    let mail = sink.wait_for(2, PATIENCE).await.remove(1);
    assert_eq!(mail.to, ["dev@example.org"]);
    let (confirm, revoke) = links(&mail, server.admin);
    let (code, page) = follow(&revoke).await;
    assert_eq!(code, 200);
    assert!(page.contains("Key revoked"), "{page}");
    assert_eq!(
        request(
            server.addr,
            &format!("command add apikey {second} domain x.example.org\n")
        )
        .await,
        "status error 403 api key revoked\n"
    );
    assert_eq!(
        reqwest::Client::new()
            .post(&revoke)
            .send()
            .await
            .unwrap()
            .status(),
        410
    );
    assert_eq!(
        reqwest::Client::new()
            .post(&confirm)
            .send()
            .await
            .unwrap()
            .status(),
        409
    );

    // A refused claim (the key is revoked) sends nothing.
    let again = format!("command claim apikey {second} email dev@example.org");
    assert_eq!(call(server.addr, &again).await.code(), 403);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.messages().len(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_link_fails_and_changes_nothing() {
    let sink = SmtpSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("{}\n[claims]\nlink_validity_secs = 1\n", smtp_toml(&sink));
    let (server, _admin) = start(dir.path(), &extra).await;
    let reply = call(server.addr, "command apikey email ops@example.org").await;
    let key = reply.data.unwrap();
    let mail = sink.wait_for(1, PATIENCE).await.remove(0);
    let (confirm, _) = links(&mail, server.admin);
    // Validity is counted in whole seconds: after two, the one-second link is over.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = reqwest::Client::new().post(&confirm).send().await.unwrap();
    assert_eq!(r.status(), 410);
    assert!(r.text().await.unwrap().contains("expired"));
    let record = server
        .store
        .key(&ApiKey::parse(&key).unwrap().hash())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.confirmed_at, None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_claim_caps_refuse_with_the_documented_replies() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.claims.max_unconfirmed_keys_per_email = 2;
    config.claims.max_new_emails_per_address_per_day = 2;
    let server = InProcess::start_with(config).await;
    let addr = server.addr;
    for _ in 0..2 {
        let key = new_key(addr).await;
        let r = call(
            addr,
            &format!("command claim apikey {key} email a@example.org"),
        )
        .await;
        assert!(r.is_ok(), "{r:?}");
    }
    let key = new_key(addr).await;
    assert_eq!(
        request(
            addr,
            &format!("command claim apikey {key} email A@EXAMPLE.org\n")
        )
        .await,
        "status error 429 too many unconfirmed keys for this email\n"
    );
    assert_eq!(
        request(addr, "command apikey email a@example.org\n").await,
        "status error 429 too many unconfirmed keys for this email\n"
    );
    assert!(
        call(
            addr,
            &format!("command claim apikey {key} email b@example.org")
        )
        .await
        .is_ok()
    );
    let key = new_key(addr).await;
    assert_eq!(
        request(
            addr,
            &format!("command claim apikey {key} email c@example.org\n")
        )
        .await,
        "status error 429 too many new addresses from your address today\n"
    );
    // A refused claim changed nothing: the key is still unclaimed and can claim a known address.
    assert!(
        call(
            addr,
            &format!("command claim apikey {key} email b@example.org")
        )
        .await
        .is_ok()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_smtp_relay_never_fails_or_delays_a_claim() {
    let port = closed_port();
    let dir = tempfile::tempdir().unwrap();
    let smtp = format!(
        "\n[smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nfrom = \"c@example.org\"\n"
    );
    let (server, admin) = start(dir.path(), &smtp).await;
    let key = new_key(server.addr).await;
    assert_eq!(
        request(
            server.addr,
            &format!("command claim apikey {key} email a@example.org\n")
        )
        .await,
        "status ok 200 api key claimed\n"
    );
    // The failure is counted for the operator, and the mail waits in the outbox for a retry.
    wait_until(PATIENCE, "the failed mail counted and pending", || async {
        let (_, metrics) = admin.get("/metrics").await;
        let counted = metrics
            .lines()
            .any(|l| l.starts_with("certline_confirmation_mails_total{result=\"failed\"}"));
        let pending = metrics
            .lines()
            .any(|l| l == "certline_confirmation_mail_outbox 1");
        done_or(counted && pending, metrics)
    })
    .await;
    assert_eq!(server.store.mail_outbox_len().await.unwrap(), 1);
    server.stop().await;
}

/// The mail job is written with the claim: a crash right after the `ok` (here with the relay
/// down, so the mail cannot have left before the kill) still mails the links after a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_mail_survives_kill_9_after_the_ok() {
    let dead_port = closed_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("certline.toml");
    let data = dir.path().join("data");
    let smtp = |port: u16| {
        format!(
            "{}public_url = \"{PUBLIC_URL}\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nfrom = \"c@example.org\"\n",
            admin_toml(dir.path())
        )
    };
    std::fs::write(&config, smtp(dead_port)).unwrap();
    let server = Binary::start(&data, Some(&config));
    let key = new_key(server.addr).await;
    assert_eq!(
        request(
            server.addr,
            &format!("command claim apikey {key} email a@example.org\n")
        )
        .await,
        "status ok 200 api key claimed\n"
    );
    server.kill9();

    let sink = SmtpSink::start().await;
    std::fs::write(&config, smtp(sink.addr.port())).unwrap();
    let server = Binary::start(&data, Some(&config));
    let mail = sink.wait_for(1, PATIENCE).await.remove(0);
    assert_eq!(mail.to, ["a@example.org"]);
    let (confirm, _) = links(&mail, server.admin);
    let (code, page) = follow(&confirm).await;
    assert_eq!(code, 200, "{page}");
    let admin = Admin::new(server.admin.expect("admin listener"));
    wait_until(PATIENCE, "the outbox empty again", || async {
        let (_, metrics) = admin.get("/metrics").await;
        let empty = metrics
            .lines()
            .any(|l| l == "certline_confirmation_mail_outbox 0");
        done_or(empty, metrics)
    })
    .await;
    // Exactly one mail: the job left the outbox when it was sent.
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_smtp_the_links_are_logged_for_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("certline.toml");
    std::fs::write(&config, admin_toml(dir.path())).unwrap();
    let log = dir.path().join("certline.log");
    let server = Binary::start_logged(&dir.path().join("data"), Some(&config), "info", Some(&log));
    let reply = call(server.addr, "command apikey email ops@example.org").await;
    let key = reply.data.unwrap();
    let line = wait_until(PATIENCE, "a confirm link in the log", || async {
        let text = std::fs::read_to_string(&log).unwrap();
        let line = text.lines().find(|l| l.contains("/link/confirm/"));
        line.map(str::to_owned).ok_or(text)
    })
    .await;
    assert!(
        line.contains("/link/revoke/") && line.contains("ops@example.org"),
        "{line}"
    );
    assert!(!line.contains(&key), "the key itself is never logged");
    // The logged link works.
    let confirm = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("confirm="))
        .unwrap();
    let r = reqwest::Client::new().post(confirm).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_require_confirmed_key_a_domain_waits_until_the_confirm_link() {
    let sim = ScmSim::start().await;
    let sink = SmtpSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, scm_sim::PASSWORD).unwrap();
    let sectigo = support::bridge_setup::sectigo_section(
        &sim,
        &pw,
        "allowed_suffixes = [\"example.edu\"]\ncreate_missing = true\norg_id = 2622\nrequire_confirmed_key = true",
    );
    let (server, admin) = start(dir.path(), &format!("{sectigo}{}", smtp_toml(&sink))).await;
    let reply = call(server.addr, "command apikey email ops@example.edu").await;
    let key = reply.data.unwrap();
    let add = format!("command add apikey {key} domain www.example.edu");
    assert!(call(server.addr, &add).await.is_ok());
    let state = || async {
        call(
            server.addr,
            &format!("command status apikey {key} domain www.example.edu"),
        )
        .await
        .data
        .unwrap()
    };
    wait_until(PATIENCE, "sectigo=awaiting_confirmation", || async {
        let now = state().await;
        done_or(now.contains(" sectigo=awaiting_confirmation"), now)
    })
    .await;
    assert!(state().await.contains(" key=unconfirmed "));
    assert_eq!(
        sim.name_hits("www.example.edu"),
        0,
        "nothing reached Sectigo"
    );
    let waiting = admin.domains("needs_action=true").await;
    assert_eq!(
        waiting[0]["needs_action"][0]["reason"],
        "awaiting_confirmation"
    );
    assert_eq!(waiting[0]["key"], "unconfirmed");

    let mail = sink.wait_for(1, PATIENCE).await.remove(0);
    let (confirm, _) = links(&mail, server.admin);
    let (code, page) = follow(&confirm).await;
    assert_eq!(code, 200, "{page}");
    wait_until(Duration::from_secs(60), "sectigo=synced", || async {
        let now = state().await;
        done_or(now.contains(" sectigo=synced"), now)
    })
    .await;
    assert!(state().await.contains(" key=confirmed "));
    assert_eq!(sim.created("www.example.edu"), 1);
    let entry = &admin.domains("suffix=example.edu").await[0];
    assert_eq!(entry["key"], "confirmed");
    assert_eq!(entry["sectigo"], "synced");
    server.stop().await;
}
