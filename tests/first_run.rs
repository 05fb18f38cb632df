//! First-run traps (issue 15): a configuration that `check-config` calls ok must never lead to
//! a domain that waits for ever without saying why.
//!
//! * Every combination of settings that can never work is refused by the real binary, both by
//!   `certline check-config` (exit 1, a `PROBLEM` line) and by `certline serve` (exits before
//!   listening), with the message README.md quotes; and each of the two ways out the message
//!   names makes the same file pass.
//! * The operator's way out for a key whose owner never got the mail: `certline confirm`,
//!   against a server that bridges to the Sectigo simulator, audited like the link.
//! * A host's `status` says why its domain waits (`waiting=key_confirmation`), and the
//!   operator's `--needs-action` names the `certline confirm` that releases it.

mod support;
use certline::Config;
use certline::apikey::ApiKey;
use certline::app::requirements::Rule;
use certline::store::AuditKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use support::admin::{Admin, TOKEN, admin_toml};
use support::client::call;
use support::scm_sim::{self, ScmSim};
use support::server::{InProcess, Launch, test_config};
use support::wait::wait_until;

const BIN: &str = env!("CARGO_BIN_EXE_certline");

/// The environment variables the configurations below name for their secrets.
const SECRETS: [(&str, &str); 2] = [
    (
        "CERTLINE_FIRST_RUN_SECTIGO_PASSWORD",
        "a-sectigo-Password-1",
    ),
    (
        "CERTLINE_FIRST_RUN_ADMIN_TOKEN",
        "a-long-admin-Token-0123456789",
    ),
];

const SECTIGO: &str = r#"
[sectigo]
allowed_suffixes = ["example.edu"]
[sectigo.auth]
mode = "headers"
login = "certline-api"
customer_uri = "example"
password_env = "CERTLINE_FIRST_RUN_SECTIGO_PASSWORD"
"#;

const ADMIN: &str =
    "\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"CERTLINE_FIRST_RUN_ADMIN_TOKEN\"\n";
const ADMIN_PUBLIC: &str = "\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"CERTLINE_FIRST_RUN_ADMIN_TOKEN\"\npublic_url = \"https://certline.example.org\"\n";
const SMTP: &str =
    "\n[smtp]\nhost = \"smtp.example.org\"\nfrom = \"certline <certline@example.org>\"\n";

/// `[sectigo]` with `settings` added to its table.
fn sectigo(settings: &str) -> String {
    SECTIGO.replace("[sectigo.auth]", &format!("{settings}\n[sectigo.auth]"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

/// `certline check-config FILE`, with the secrets set.
fn check_config(file: &Path) -> Output {
    Command::new(BIN)
        .arg("check-config")
        .arg(file)
        .envs(SECRETS)
        .output()
        .expect("run certline check-config")
}

/// `certline serve --config FILE`, which must exit by itself (a refusal): its status and
/// stderr. A server that starts instead fails the test.
fn serve_refused(dir: &Path, file: &Path) -> (std::process::ExitStatus, String) {
    let stderr = dir.join("serve.stderr");
    let secrets: Vec<(String, String)> = SECRETS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let data = dir.join("data");
    match Launch::new(&data)
        .config(file)
        .envs(&secrets)
        .logged("warn", Some(&stderr))
        .try_start()
    {
        Ok(_) => panic!("certline serve started with {}", file.display()),
        Err(status) => (status, std::fs::read_to_string(stderr).unwrap()),
    }
}

/// A dead end: `body` alone is refused by check-config and serve with `messages`; each of
/// `ways_out` (the file after following one way out the message names) passes check-config.
fn refused(body: &str, messages: &[&str], ways_out: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "certline.toml", body);
    let o = check_config(&file);
    let out = text(&o.stdout);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{body}\n{out}{err}");
    for m in messages {
        assert!(
            out.contains(&format!("PROBLEM: {m}")) || err.contains(m),
            "check-config does not say {m:?}:\n{out}{err}"
        );
    }
    let (status, stderr) = serve_refused(dir.path(), &file);
    assert!(!status.success(), "{body}");
    for m in messages {
        assert!(stderr.contains(m), "serve does not say {m:?}:\n{stderr}");
    }
    for fixed in ways_out {
        let file = write(dir.path(), "fixed.toml", fixed);
        let o = check_config(&file);
        assert!(
            o.status.success(),
            "a way out still fails:\n{fixed}\n{}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        assert!(
            text(&o.stdout).contains("requirements: ok"),
            "{}",
            text(&o.stdout)
        );
    }
}

#[test]
fn require_confirmed_key_without_admin_is_refused() {
    let message = Rule::ConfirmationNeedsAdmin.message();
    // The default, and said out loud.
    refused(
        &sectigo(""),
        &[message],
        &[
            format!("{}{ADMIN}", sectigo("")),
            format!("{}{ADMIN_PUBLIC}{SMTP}", sectigo("")),
            sectigo("require_confirmed_key = false"),
        ],
    );
    refused(
        &sectigo("require_confirmed_key = true"),
        &[message],
        &[sectigo("require_confirmed_key = false")],
    );
}

#[test]
fn smtp_without_admin_is_refused() {
    refused(
        SMTP,
        &[Rule::SmtpNeedsAdmin.message()],
        &[format!("{ADMIN_PUBLIC}{SMTP}"), String::new()],
    );
}

#[test]
fn smtp_with_links_under_a_loopback_address_is_refused() {
    let message = Rule::SmtpLinksUnreachable.message();
    // No public_url: the default is http://<admin.listen>, loopback by default.
    refused(
        &format!("{ADMIN}{SMTP}"),
        &[message],
        &[format!("{ADMIN_PUBLIC}{SMTP}"), ADMIN.to_owned()],
    );
    for public_url in [
        "http://localhost:10080",
        "http://127.0.0.1:10080",
        "http://[::1]:10080",
    ] {
        refused(
            &format!("{ADMIN}public_url = \"{public_url}\"\n{SMTP}"),
            &[message],
            &[],
        );
    }
    refused(
        &format!("{}{SMTP}", ADMIN.replace("127.0.0.1:0", "0.0.0.0:10080")),
        &[message],
        &[format!(
            "{}{SMTP}",
            ADMIN.replace("127.0.0.1:0", "192.0.2.10:10080")
        )],
    );
}

#[test]
fn dns_validation_with_no_hook_and_no_operator_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hook = write(dir.path(), "dns-hook", "#!/bin/sh\nexit 0\n");
    let hook = format!("dcv_hook = {:?}", hook.display().to_string());
    for method in ["cname", "txt"] {
        let dcv = format!("require_confirmed_key = false\ndcv_method = \"{method}\"");
        refused(
            &sectigo(&dcv),
            &[Rule::DcvNeedsHookOrAdmin.message()],
            &[
                sectigo(&format!("{dcv}\n{hook}")),
                format!("{}{ADMIN}", sectigo(&dcv)),
                sectigo("require_confirmed_key = false\ndcv_method = \"none\""),
            ],
        );
    }
}

#[test]
fn a_dns_hook_that_can_never_run_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hook = write(dir.path(), "dns-hook", "#!/bin/sh\nexit 0\n");
    let hook = format!("dcv_hook = {:?}", hook.display().to_string());
    refused(
        &sectigo(&format!("require_confirmed_key = false\n{hook}")),
        &[Rule::DcvHookNeverRuns.message()],
        &[
            sectigo(&format!(
                "require_confirmed_key = false\n{hook}\ndcv_method = \"cname\""
            )),
            sectigo("require_confirmed_key = false"),
        ],
    );
}

#[test]
fn ct_monitoring_without_a_bucket_and_creating_without_an_org_are_refused() {
    let open = "require_confirmed_key = false";
    refused(
        &sectigo(&format!("{open}\nct_monitoring = true")),
        &["sectigo.ct_monitoring needs sectigo.ct_bucket_id"],
        &[
            sectigo(&format!(
                "{open}\nct_monitoring = true\nct_bucket_id = \"6d505c9c-b66b-44f9-8ba4-3aaf4d69aed6\""
            )),
            sectigo(open),
        ],
    );
    refused(
        &sectigo(&format!("{open}\ncreate_missing = true")),
        &["sectigo.create_missing needs sectigo.org_id"],
        &[
            sectigo(&format!("{open}\ncreate_missing = true\norg_id = 2622")),
            sectigo(open),
        ],
    );
}

#[test]
fn every_problem_is_named_at_once() {
    refused(
        &format!("{SMTP}{}", sectigo("dcv_method = \"txt\"")),
        &[
            Rule::ConfirmationNeedsAdmin.message(),
            Rule::SmtpNeedsAdmin.message(),
            Rule::DcvNeedsHookOrAdmin.message(),
        ],
        &[],
    );
}

#[test]
fn every_refusal_is_quoted_verbatim_in_the_readme() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    for rule in Rule::ALL {
        assert!(
            readme.contains(&format!("- `{}`", rule.message())),
            "README.md does not quote {rule:?}: {}",
            rule.message()
        );
    }
}

/// A server bridging to `sim` that requires confirmed keys, with `[admin]` but no `[smtp]`:
/// the links are only logged, so a key whose owner never sees them needs the operator.
async fn confirming_server(sim: &ScmSim, dir: &Path) -> InProcess {
    let pw = write(dir, "pw", scm_sim::PASSWORD);
    let sectigo = support::bridge_setup::sectigo_section(
        sim,
        &pw,
        "allowed_suffixes = [\"example.edu\"]\ncreate_missing = true\norg_id = 2622\nrequire_confirmed_key = true",
    );
    let mut config = Config::from_toml(&format!("{}\n{sectigo}", admin_toml(dir))).unwrap();
    let base = test_config(&dir.join("data"));
    config.listen = base.listen;
    config.data_dir = base.data_dir;
    config.rate_limit = base.rate_limit;
    config.claims = base.claims;
    InProcess::start_with(config).await
}

/// `certline ARGS` against the admin listener `admin`.
fn cli(admin: std::net::SocketAddr, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("CERTLINE_ADMIN_URL", format!("http://{admin}"))
        .env("CERTLINE_ADMIN_TOKEN", TOKEN)
        .output()
        .expect("run certline")
}

/// Polls `status` until its data line contains `want`; returns that line.
async fn wait_status(server: &InProcess, key: &str, domain: &str, want: &str) -> String {
    let line = format!("command status apikey {key} domain {domain}");
    wait_until(Duration::from_secs(60), want, || async {
        let data = call(server.addr, &line).await.data.unwrap();
        if data.contains(want) {
            Ok(data)
        } else {
            Err(data)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_confirms_a_key_whose_owner_never_got_the_mail() {
    let sim = ScmSim::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = confirming_server(&sim, dir.path()).await;
    let admin_addr = server.admin.expect("admin listener");
    let admin = Admin::new(admin_addr);

    // A host registers, as README.md's bash does.
    let key = call(server.addr, "command apikey").await.data.unwrap();
    let claim = format!("command claim apikey {key} email ops@example.edu");
    assert!(call(server.addr, &claim).await.is_ok());
    let add = format!("command add domain www.example.edu apikey {key}");
    assert!(call(server.addr, &add).await.is_ok());

    // The host sees why it waits...
    let data = wait_status(
        &server,
        &key,
        "www.example.edu",
        " sectigo=awaiting_confirmation",
    )
    .await;
    assert!(
        data.contains(" key=unconfirmed sectigo=awaiting_confirmation waiting=key_confirmation"),
        "{data}"
    );
    assert_eq!(
        sim.name_hits("www.example.edu"),
        0,
        "nothing reached Sectigo"
    );

    // ...and the operator sees it with the way out.
    let id = ApiKey::parse(&key).unwrap().hash().id();
    let o = cli(admin_addr, &["domains", "--needs-action"]);
    let listed = text(&o.stdout);
    assert!(o.status.success(), "{listed}{}", text(&o.stderr));
    let row = listed
        .lines()
        .find(|l| l.starts_with("www.example.edu "))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(
        row.contains("awaiting_confirmation: no key holding it is confirmed")
            && row.contains(&format!("`certline confirm {id}`")),
        "{row}"
    );

    // Refusals say what to do and change nothing.
    let o = cli(admin_addr, &["confirm", "zz"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("hex digits of the key id"),
        "{}",
        text(&o.stderr)
    );
    let o = cli(admin_addr, &["confirm", "0000000000000000"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("no key id starts with"),
        "{}",
        text(&o.stderr)
    );
    let (status, _) = reqwest::Client::new()
        .post(format!("http://{admin_addr}/api/keys/{id}/confirm"))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 401, "confirming needs the admin token");
    assert_eq!(
        server
            .store
            .key(&ApiKey::parse(&key).unwrap().hash())
            .await
            .unwrap()
            .unwrap()
            .confirmed_at,
        None
    );

    // The operator confirms it by a prefix of its id.
    let o = cli(admin_addr, &["confirm", &id[..8]]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout),
        format!("key {id} confirmed; 1 waiting domain(s) go on to Sectigo now\n")
    );
    let data = wait_status(&server, &key, "www.example.edu", " sectigo=synced").await;
    assert!(data.contains(" key=confirmed "), "{data}");
    assert!(!data.contains("waiting="), "{data}");
    assert_eq!(sim.created("www.example.edu"), 1);
    let entry = &admin.domains("suffix=www.example.edu").await[0];
    assert!(
        entry["needs_action"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["reason"] != "awaiting_confirmation"),
        "{entry}"
    );

    // Audited as the link is: confirm-apikey, with the operator's address.
    let confirmations: Vec<_> = support::store::audit_trail(&server.store)
        .await
        .into_iter()
        .filter(|e| e.kind == AuditKind::KeyConfirmed)
        .collect();
    assert_eq!(confirmations.len(), 1);
    assert_eq!(confirmations[0].key_id, id);
    assert!(confirmations[0].ip.is_loopback());
    assert_eq!(AuditKind::KeyConfirmed.name(), "confirm-apikey");

    // Again: harmless, and said so.
    let o = cli(admin_addr, &["confirm", &id]);
    assert!(o.status.success());
    assert!(
        text(&o.stdout).starts_with(&format!("key {id} was already confirmed (")),
        "{}",
        text(&o.stdout)
    );

    // A revoked key cannot be confirmed.
    let other = call(server.addr, "command apikey").await.data.unwrap();
    let other_id = ApiKey::parse(&other).unwrap().hash().id();
    assert!(cli(admin_addr, &["revoke", &other_id]).status.success());
    let o = cli(admin_addr, &["confirm", &other_id]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("409") && text(&o.stderr).contains("is revoked"),
        "{}",
        text(&o.stderr)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_that_was_never_claimed_waits_visibly_until_the_operator_confirms_it() {
    // The first-boot script's key before its claim, or a host that never claims: no mail
    // will ever come, so only the operator can release it.
    let sim = ScmSim::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = confirming_server(&sim, dir.path()).await;
    let admin = Admin::new(server.admin.unwrap());
    let key = call(server.addr, "command apikey").await.data.unwrap();
    for d in ["a.example.edu", "b.example.edu:8443"] {
        let add = format!("command add domain {d} apikey {key}");
        assert!(call(server.addr, &add).await.is_ok());
    }
    for d in ["a.example.edu", "b.example.edu:8443"] {
        wait_status(&server, &key, d, " waiting=key_confirmation").await;
    }
    let waiting = admin.domains("needs_action=true").await;
    assert_eq!(waiting.len(), 2, "{waiting:?}");
    let id = ApiKey::parse(&key).unwrap().hash().id();
    let (code, body) = admin
        .post(&format!("/api/keys/{}/confirm", &id[..6]), None)
        .await;
    assert_eq!(code, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["id"], id);
    assert_eq!(body["already"], false);
    assert_eq!(body["requeued"], 2);
    for d in ["a.example.edu", "b.example.edu:8443"] {
        wait_status(&server, &key, d, " sectigo=synced").await;
    }
    server.stop().await;
}
