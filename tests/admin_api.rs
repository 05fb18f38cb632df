//! The admin API over real HTTP: authentication, the inventory and its filters, key listing
//! and revocation (effective on the line protocol at once), requeue, import.

mod support;
use certline::Config;
use certline::apikey::ApiKey;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use support::admin::{Admin, TOKEN, admin_toml, names};
use support::client::{call, new_key, request};
use support::scm_sim::{self, ScmSim};
use support::server::{InProcess, test_config};
use support::wait::wait_until;

/// A server with `[admin]` (and `extra` TOML) on a fresh directory.
async fn start(dir: &Path, extra: &str) -> (InProcess, Admin) {
    start_on(dir, extra, InProcess::start_with).await
}

/// [`start`] with `starter` ([`InProcess::start_with`] or its sled-only variant).
async fn start_on<F: std::future::Future<Output = InProcess>>(
    dir: &Path,
    extra: &str,
    starter: impl FnOnce(Config) -> F,
) -> (InProcess, Admin) {
    let base = test_config(&dir.join("data"));
    let text = format!("{}\n{extra}", admin_toml(dir));
    let mut config = Config::from_toml(&text).unwrap();
    config.listen = base.listen;
    config.data_dir = base.data_dir;
    config.rate_limit = base.rate_limit;
    config.claims = base.claims;
    let server = starter(config).await;
    let admin = Admin::new(server.admin.expect("admin listener"));
    (server, admin)
}

/// A `[sectigo]` section pointing at the simulator; `create_missing = false`.
fn sectigo_toml(sim: &ScmSim, dir: &Path, extra: &str) -> String {
    let pw = dir.join("sectigo-password");
    std::fs::write(&pw, scm_sim::PASSWORD).unwrap();
    let settings = format!(
        "allowed_suffixes = [\"example.edu\"]\ncreate_missing = false\nrequire_confirmed_key = false\n{extra}"
    );
    support::bridge_setup::sectigo_section(sim, &pw, &settings)
}

async fn add(addr: std::net::SocketAddr, key: &str, domain: &str) {
    let reply = call(addr, &format!("command add apikey {key} domain {domain}")).await;
    assert!(reply.is_ok(), "{reply:?}");
}

/// Polls the inventory until `domain` is in `state`.
async fn wait_state(admin: &Admin, domain: &str, state: &str) -> serde_json::Value {
    wait_until(
        Duration::from_secs(60),
        &format!("{domain} in {state}"),
        || async {
            let all = admin.domains("").await;
            let d = all.iter().find(|d| d["domain"] == domain).cloned();
            match d {
                Some(d) if d["sectigo"] == state => Ok(d),
                other => Err(other),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn everything_but_health_needs_the_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin) = start(dir.path(), "").await;
    let http = reqwest::Client::new();
    for open in ["/healthz", "/readyz"] {
        let r = http
            .get(format!("{}{open}", admin.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{open}");
    }
    let protected = [
        ("GET", "/metrics"),
        ("GET", "/api/domains"),
        ("GET", "/api/keys"),
        ("POST", "/api/keys/abcd/revoke"),
        ("POST", "/api/domains/www.example.org/requeue"),
        ("POST", "/api/domains"),
    ];
    for (method, path) in protected {
        let url = format!("{}{path}", admin.base);
        let build = |token: Option<&str>| {
            let r = match method {
                "GET" => http.get(&url),
                _ => http.post(&url),
            };
            match token {
                Some(t) => r.bearer_auth(t),
                None => r,
            }
        };
        for token in [None, Some("wrong-token-wrong-token"), Some(&TOKEN[1..])] {
            let r = build(token).send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {token:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
            let body = r.text().await.unwrap();
            assert!(body.contains("admin.token_env"), "{body}");
        }
    }
    assert_eq!(admin.get("/metrics").await.0, 200);
    assert_eq!(admin.get("/api/keys").await.0, 200);
    assert_eq!(admin.get("/nope").await.0, 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn inventory_shows_bridge_state_and_filters_by_state_suffix_and_needs_action() {
    let sim = ScmSim::start().await;
    let today = chrono::Utc::now().date_naive();
    for (name, expires_in) in [("ok.example.edu", 300), ("soon.example.edu", 10)] {
        sim.add_domain(name);
        sim.set_dcv_validated(name, today, today + chrono::Duration::days(expires_in));
    }
    sim.add_domain("unvalidated.example.edu");
    let dir = tempfile::tempdir().unwrap();
    let (server, admin) = start(dir.path(), &sectigo_toml(&sim, dir.path(), "")).await;
    let key = new_key(server.addr).await;
    for d in [
        "ok.example.edu",
        "soon.example.edu",
        "unvalidated.example.edu",
        "missing.example.edu",
        "www.other.org:8443",
    ] {
        add(server.addr, &key, d).await;
    }
    let ok = wait_state(&admin, "ok.example.edu", "synced").await;
    wait_state(&admin, "soon.example.edu", "synced").await;
    wait_state(&admin, "unvalidated.example.edu", "synced").await;
    wait_state(&admin, "missing.example.edu", "not_in_sectigo").await;
    wait_state(&admin, "www.other.org:8443", "not_forwarded").await;

    // One entry carries the documented fields.
    assert_eq!(ok["dcv"], "VALIDATED");
    assert_eq!(ok["id"], sim.domain_id("ok.example.edu").unwrap());
    assert_eq!(ok["key"], "unconfirmed");
    assert_eq!(
        ok["keys"][0]["id"],
        ApiKey::parse(&key).unwrap().hash().id()
    );
    assert!(
        ok["checked"].is_string() && ok["next_attempt"].is_null(),
        "{ok}"
    );
    assert_eq!(ok["needs_action"], serde_json::json!([]));

    let list = admin.json("/api/domains").await;
    assert_eq!(list["bridge"], "on");
    assert_eq!(list["domains"].as_array().unwrap().len(), 5);
    assert!(list["next_cursor"].is_null(), "one page holds all: {list}");
    let counted = admin.json("/api/domains/count").await;
    assert_eq!(
        (&counted["count"], &counted["bridge"]),
        (&5.into(), &"on".into())
    );
    let counted = admin.json("/api/domains/count?needs_action=true").await;
    assert_eq!(counted["count"], 3);
    assert_eq!(
        names(&admin.domains("state=not_in_sectigo").await),
        ["missing.example.edu"]
    );
    assert_eq!(
        names(&admin.domains("suffix=other.org").await),
        ["www.other.org:8443"]
    );
    assert_eq!(admin.domains("suffix=example.edu").await.len(), 4);
    assert_eq!(admin.domains("suffix=ther.org").await.len(), 0);
    let needs = admin.domains("needs_action=true").await;
    let reasons: HashMap<String, String> = needs
        .iter()
        .map(|d| {
            (
                d["domain"].as_str().unwrap().to_owned(),
                d["needs_action"][0]["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        HashMap::from([
            ("missing.example.edu".into(), "not_in_sectigo".into()),
            ("soon.example.edu".into(), "dcv_expiring".into()),
            ("unvalidated.example.edu".into(), "dcv_not_validated".into()),
        ])
    );
    let (status, body) = admin.get("/api/domains?colour=blue").await;
    assert_eq!(status, 400, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_revoked_by_prefix_is_refused_on_the_line_protocol_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin) = start(dir.path(), "").await;
    let key = new_key(server.addr).await;
    let other = new_key(server.addr).await;
    let claim = format!("command claim apikey {key} email ops@example.org");
    assert!(call(server.addr, &claim).await.is_ok());
    add(server.addr, &key, "www.example.org").await;

    let keys = admin.json("/api/keys").await;
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2);
    assert_eq!(admin.json("/api/keys/count").await["count"], 2);
    let id = ApiKey::parse(&key).unwrap().hash().id();
    let entry = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["email"], "ops@example.org");
    assert_eq!(entry["domains"], 1);
    assert!(
        entry["claimed"].is_string() && entry["revoked"].is_null(),
        "{entry}"
    );

    let (status, body) = admin
        .post(&format!("/api/keys/{}/revoke", &id[..8]), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let revoked: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(revoked["id"], id.as_str());
    assert_eq!(revoked["already"], false);
    assert_eq!(
        request(
            server.addr,
            &format!("command add apikey {key} domain b.example.org\n")
        )
        .await,
        "status error 403 api key revoked\n"
    );
    // The other key still works.
    add(server.addr, &other, "b.example.org").await;
    // Revoking again is idempotent and says so.
    let (status, body) = admin.post(&format!("/api/keys/{id}/revoke"), None).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"already\":true"), "{body}");
    let listed = admin.json("/api/keys").await;
    assert!(listed.to_string().contains("\"revoked\":"), "{listed}");

    // Ambiguous prefixes are refused: make keys until two ids share 4 digits.
    let mut by_prefix: HashMap<String, usize> = HashMap::new();
    let shared = loop {
        let k = ApiKey::generate();
        server
            .store
            .create_key(
                &k.hash(),
                None,
                &Default::default(),
                [127, 0, 0, 1].into(),
                0,
            )
            .await
            .unwrap();
        let n = by_prefix.entry(k.hash().id()[..4].to_owned()).or_default();
        *n += 1;
        if *n == 2 {
            break k.hash().id()[..4].to_owned();
        }
    };
    let (status, body) = admin
        .post(&format!("/api/keys/{shared}/revoke"), None)
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("give more digits"), "{body}");
    let (status, _) = admin.post("/api/keys/abc/revoke", None).await;
    assert_eq!(status, 400, "too short");
    let (status, _) = admin.post("/api/keys/zzzzzz/revoke", None).await;
    assert_eq!(status, 400, "not hex");
    let mut unknown = None;
    for prefix in (0..16u8).map(|i| format!("{i:x}0000000")) {
        if server
            .store
            .keys_with_id_prefix(&prefix)
            .await
            .unwrap()
            .is_empty()
        {
            unknown = Some(prefix);
            break;
        }
    }
    let unknown = unknown.unwrap();
    let (status, _) = admin
        .post(&format!("/api/keys/{unknown}/revoke"), None)
        .await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn requeue_sends_a_domain_back_to_the_bridge_now() {
    let sim = ScmSim::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, admin) = start(dir.path(), &sectigo_toml(&sim, dir.path(), "")).await;
    let key = new_key(server.addr).await;
    add(server.addr, &key, "late.example.edu:8443").await;
    let before = wait_state(&admin, "late.example.edu:8443", "not_in_sectigo").await;
    assert!(before["next_attempt"].is_string());
    // The operator adds it in Sectigo; without a requeue it would wait a day for the recheck.
    sim.add_domain("late.example.edu");
    let (status, body) = admin
        .post("/api/domains/LATE.example.edu:8443/requeue", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, r#"{"domain":"late.example.edu","sectigo":"queued"}"#);
    wait_state(&admin, "late.example.edu:8443", "synced").await;

    let (status, _) = admin
        .post("/api/domains/unknown.example.edu/requeue", None)
        .await;
    assert_eq!(status, 404);
    // An invalid name gets the line protocol's code for it.
    let (status, _) = admin.post("/api/domains/not_a..domain/requeue", None).await;
    assert_eq!(status, 406);
    server.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let (server, admin) = start(dir.path(), "").await;
    let key = new_key(server.addr).await;
    add(server.addr, &key, "www.example.org").await;
    let (status, body) = admin
        .post("/api/domains/www.example.org/requeue", None)
        .await;
    assert_eq!(status, 409, "no bridge: {body}");
    assert_eq!(
        admin.json("/api/domains").await["domains"][0]["sectigo"],
        "off"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn import_registers_like_add_and_reports_each_line() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin) = start(dir.path(), "").await;
    let key = new_key(server.addr).await;
    add(server.addr, &key, "a.example.org").await;
    let body = serde_json::json!({
        "apikey": key,
        "domains": ["A.example.org", "b.example.org.", "not_valid..org", "*.c.example.org:8443"],
    });
    let (status, text) = admin.post("/api/domains", Some(body)).await;
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let outcomes: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["already_registered", "added", "invalid_domain", "added"]
    );
    assert_eq!(v["results"][3]["domain"], "c.example.org:8443");
    assert_eq!(
        call(server.addr, &format!("command list apikey {key}"))
            .await
            .data
            .unwrap(),
        "total=3 offset=0 domains=a.example.org,b.example.org,c.example.org:8443"
    );
    // The key is judged by the line protocol's rule, with its codes and texts.
    let unknown = serde_json::json!({"apikey": "0000000000000000", "domains": ["x.org"]});
    let (status, text) = admin.post("/api/domains", Some(unknown)).await;
    assert_eq!(
        (status, text.as_str()),
        (401, r#"{"error":"unknown api key"}"#)
    );
    let bad = serde_json::json!({"apikey": "not a key", "domains": []});
    let (status, text) = admin.post("/api/domains", Some(bad)).await;
    assert_eq!(
        (status, text.as_str()),
        (422, r#"{"error":"invalid api key format"}"#)
    );
    let id = ApiKey::parse(&key).unwrap().hash().id();
    let (status, text) = admin
        .post(&format!("/api/keys/{}/revoke", &id[..8]), None)
        .await;
    assert_eq!(status, 200, "{text}");
    let revoked = serde_json::json!({"apikey": key, "domains": ["y.example.org"]});
    let (status, text) = admin.post("/api/domains", Some(revoked)).await;
    assert_eq!(
        (status, text.as_str()),
        (403, r#"{"error":"api key revoked"}"#)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_fails_while_the_store_cannot_commit() {
    let dir = tempfile::tempdir().unwrap();
    // Fails the embedded store's group commit, so on sled whatever CERTLINE_TEST_STORE says;
    // tests/readyz_postgres.rs is the same on PostgreSQL (its connections cut).
    let (server, admin) = start_on(dir.path(), "", InProcess::start_with_sled).await;
    let url = format!("{}/readyz", admin.base);
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
    server
        .store
        .group_commit()
        .expect("sled has group commit")
        .inject_flush_failures(1);
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status(), 503);
    let why = r.text().await.unwrap();
    assert!(why.contains("store not writable"), "{why}");
    assert!(why.contains("free space"), "{why}");
    // The store retries by itself; readiness follows.
    let started = std::time::Instant::now();
    while reqwest::get(&url).await.unwrap().status() != 200 {
        assert!(
            started.elapsed() < support::client::PATIENCE,
            "never ready again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn listings_page_with_an_opaque_cursor_and_filters_apply_before_paging() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin) = start(dir.path(), "").await;
    let keys = [new_key(server.addr).await, new_key(server.addr).await];
    let mut expected = Vec::new();
    for i in 0..23 {
        let zone = if i % 3 == 0 {
            "example.edu"
        } else {
            "example.org"
        };
        let domain = format!("host{i:02}.{zone}");
        add(server.addr, &keys[i % 2], &domain).await;
        expected.push(domain);
    }
    // A domain two keys hold lists both holders.
    add(server.addr, &keys[1], "host00.example.edu").await;
    expected.sort();

    // limit=5: five pages, in order, nothing twice, the last without a cursor.
    let mut listed = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let page = admin
            .json(&format!("/api/domains?limit=5&cursor={cursor}"))
            .await;
        pages += 1;
        listed.extend(names(page["domains"].as_array().unwrap()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!((listed, pages), (expected.clone(), 5));
    let both = admin.domains("suffix=host00.example.edu").await;
    assert_eq!(both[0]["keys"].as_array().unwrap().len(), 2, "{both:?}");

    // The filter picks before the limit counts: each page holds only matches.
    let edu = admin.json("/api/domains?suffix=example.edu&limit=3").await;
    assert_eq!(
        names(edu["domains"].as_array().unwrap()),
        [
            "host00.example.edu",
            "host03.example.edu",
            "host06.example.edu"
        ]
    );
    let edu_all = admin
        .all_pages("/api/domains", "suffix=example.edu&limit=3", "domains")
        .await;
    assert_eq!(edu_all.len(), 8);
    assert_eq!(
        admin.json("/api/domains/count?suffix=example.edu").await["count"],
        8
    );

    // Keys page the same way; a domain cursor is not a key cursor.
    let first = admin.json("/api/keys?limit=1").await;
    assert_eq!(first["keys"].as_array().unwrap().len(), 1);
    let key_cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let second = admin
        .json(&format!("/api/keys?limit=1&cursor={key_cursor}"))
        .await;
    assert_eq!(second["keys"].as_array().unwrap().len(), 1);
    assert!(second["next_cursor"].is_null(), "{second}");
    assert_ne!(first["keys"][0]["id"], second["keys"][0]["id"]);
    let domain_cursor = admin.json("/api/domains?limit=1").await["next_cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    for bad in [
        format!("/api/keys?cursor={domain_cursor}"),
        format!("/api/domains?cursor={key_cursor}"),
        "/api/domains?cursor=not-hex".to_owned(),
        "/api/domains?limit=0".to_owned(),
        "/api/domains?limit=5001".to_owned(),
    ] {
        let (status, body) = admin.get(&bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("\"error\""), "{bad}: {body}");
    }
    server.stop().await;
}

/// Every refusal is `{"error": "..."}` with its status, including the ones axum's extractors
/// and router make (README: "errors are JSON").
#[tokio::test(flavor = "multi_thread")]
async fn every_admin_error_is_json_with_the_right_status() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin) = start(dir.path(), "").await;
    let url = |path: &str| format!("{}{path}", admin.base);
    let http = &admin.http;
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "unknown query field",
            http.get(url("/api/domains?stat=synced")),
            400,
        ),
        (
            "bad query value",
            http.get(url("/api/domains?needs_action=maybe")),
            400,
        ),
        (
            "malformed JSON",
            http.post(url("/api/domains"))
                .header("content-type", "application/json")
                .body("{\"apikey\": "),
            400,
        ),
        (
            "JSON missing a field",
            http.post(url("/api/domains"))
                .header("content-type", "application/json")
                .body("{\"apikey\": \"abc\"}"),
            422,
        ),
        (
            "no content type",
            http.post(url("/api/domains"))
                .body("{\"apikey\": \"abc\", \"domains\": []}"),
            415,
        ),
        ("wrong method", http.delete(url("/api/keys")), 405),
        (
            "wrong method on an open route",
            http.post(url("/healthz")),
            405,
        ),
        ("no such route", http.get(url("/api/nope")), 404),
    ];
    for (what, request, want) in cases {
        let r = request.bearer_auth(TOKEN).send().await.unwrap();
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = r.text().await.unwrap();
        assert_eq!(status, want, "{what}: {body}");
        assert_eq!(
            content_type.as_deref(),
            Some("application/json"),
            "{what}: {body}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
        let message = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: {body}"));
        assert!(!message.is_empty(), "{what}");
        assert_eq!(v.as_object().unwrap().len(), 1, "{what}: {body}");
    }
    server.stop().await;
}
