//! Sectigo ACME accounts end to end against the SCM simulator: one account per API key
//! holding exactly that key's eligible domains, unmapped on removal, deleted on revocation,
//! one account per key through lost answers and kill -9, exactly-once mapping through
//! injected faults, and the EAB hand-out over the line protocol.

mod support;
use certline::Config;
use certline::apikey::ApiKey;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;
use support::acme_setup::{
    ACME_SERVER, acme_state, acme_toml, eab_pool, seed_validated, wait_acme,
};
use support::bridge_setup::register;
use support::client::call;
use support::scm_sim::{self, ScmSim};
use support::server::{Binary, InProcess, test_config};
use support::wait::{done_or, wait_until};

const LIMIT: Duration = Duration::from_secs(60);

struct Setup {
    dir: tempfile::TempDir,
    config_file: PathBuf,
}

fn setup(sim: &ScmSim, sectigo: &str, acme: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("sectigo-password");
    std::fs::write(&password_file, scm_sim::PASSWORD).unwrap();
    let config_file = dir.path().join("certline.toml");
    std::fs::write(&config_file, acme_toml(sim, &password_file, sectigo, acme)).unwrap();
    Setup { dir, config_file }
}

async fn start(s: &Setup) -> InProcess {
    let mut config = Config::from_file(&s.config_file).unwrap();
    let base = test_config(&s.dir.path().join("data"));
    config.listen = base.listen;
    config.data_dir = base.data_dir;
    InProcess::start_with(config).await
}

fn names(n: usize, prefix: &str) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}.example.edu")).collect()
}

fn key_id(key: &str) -> String {
    ApiKey::parse(key).unwrap().hash().id()
}

/// The simulator's account named for `key`, with its domains.
fn account_of(sim: &ScmSim, key: &str) -> Option<scm_sim::acme::AcmeAccountView> {
    let name = format!("certline-{}", key_id(key));
    let mut found: Vec<_> = sim
        .acme_accounts()
        .into_iter()
        .filter(|a| a.name == name)
        .collect();
    assert!(found.len() <= 1, "two accounts named {name}: {found:?}");
    found.pop()
}

const OPEN: &str = "require_confirmed_key = false";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_keys_two_accounts_each_with_only_its_own_domains_removal_unmaps_revocation_deletes() {
    let sim = ScmSim::start().await;
    sim.set_eab_pool(&eab_pool(4));
    let a_names = names(3, "a");
    let b_names = names(2, "b");
    seed_validated(&sim, &a_names);
    seed_validated(&sim, &b_names);
    // Registered, in SCM, but DCV not validated: must stay out of the account.
    sim.add_domain("unvalidated.example.edu");
    let s = setup(&sim, OPEN, "");
    let server = start(&s).await;
    let key_a = register(server.addr, &a_names).await;
    let key_b = register(server.addr, &b_names).await;
    let reply = call(
        server.addr,
        &format!("command add apikey {key_a} domain unvalidated.example.edu"),
    )
    .await;
    assert!(reply.is_ok());

    wait_acme(server.addr, &key_a, &a_names, "mapped", LIMIT).await;
    wait_acme(server.addr, &key_b, &b_names, "mapped", LIMIT).await;
    let account_a = account_of(&sim, &key_a).expect("key A's account");
    let account_b = account_of(&sim, &key_b).expect("key B's account");
    assert_ne!(account_a.id, account_b.id);
    assert_eq!(
        account_a.domains, a_names,
        "A holds exactly A's validated names"
    );
    assert_eq!(account_b.domains, b_names, "B holds exactly B's names");
    assert_eq!(sim.acme_accounts().len(), 2);
    let (state, account, data) = acme_state(server.addr, &key_a, "unvalidated.example.edu").await;
    assert_eq!(state, "pending", "{data}");
    assert_eq!(account, Some(account_a.id), "{data}");
    assert!(
        !data.contains(&account_a.mac_key),
        "status never shows the HMAC: {data}"
    );

    // Removing a domain unmaps it; the other names stay.
    let reply = call(
        server.addr,
        &format!("command remove apikey {key_a} domain {}", a_names[1]),
    )
    .await;
    assert!(reply.is_ok());
    wait_until(LIMIT, "a1 to leave A's account", || async {
        done_or(
            account_of(&sim, &key_a).unwrap().domains == [a_names[0].clone(), a_names[2].clone()],
            sim.acme_accounts(),
        )
    })
    .await;

    // Revoking key B deletes its account; A's is untouched.
    let hash_b = ApiKey::parse(&key_b).unwrap().hash();
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    assert!(
        server
            .store
            .revoke_key(&hash_b, ip, chrono::Utc::now().timestamp())
            .await
            .unwrap()
    );
    server.store.commit().await.unwrap();
    wait_until(LIMIT, "B's account to be deleted", || async {
        done_or(account_of(&sim, &key_b).is_none(), sim.acme_accounts())
    })
    .await;
    assert_eq!(sim.acme_accounts().len(), 1);
    assert_eq!(account_of(&sim, &key_a).unwrap().id, account_a.id);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_create_answer_leaves_one_account_found_by_name() {
    let sim = ScmSim::start().await;
    sim.set_eab_pool(&eab_pool(4));
    let domains = names(2, "lost");
    seed_validated(&sim, &domains);
    sim.lose_next_create_answers(1);
    let s = setup(&sim, OPEN, "");
    let server = start(&s).await;
    let key = register(server.addr, &domains).await;
    wait_acme(server.addr, &key, &domains, "mapped", LIMIT).await;
    assert_eq!(sim.count("POST /api/acme/v2/account"), 1, "created once");
    assert_eq!(sim.acme_accounts().len(), 1);
    assert_eq!(account_of(&sim, &key).unwrap().domains, domains);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_between_account_created_and_id_stored_leaves_one_account() {
    let sim = ScmSim::start().await;
    let pool = eab_pool(4);
    sim.set_eab_pool(&pool);
    let domains = names(3, "k");
    seed_validated(&sim, &domains);
    sim.freeze_acme_after_next_create();
    let s = setup(&sim, OPEN, "hand_out_eab = true");
    let data = s.dir.path().join("data");
    let log = s.dir.path().join("certline.log");
    let server = Binary::start_logged(&data, Some(&s.config_file), "trace", Some(&log));
    let key = register(server.addr, &domains).await;
    // The account exists in SCM; certline has not seen the answer (every ACME call fails).
    wait_until(LIMIT, "the account to be created", || async {
        done_or(sim.acme_accounts().len() == 1, sim.acme_accounts())
    })
    .await;
    let reply = call(server.addr, &format!("command acme apikey {key}")).await;
    assert_eq!(reply.code(), 409, "no account known yet: {reply:?}");
    server.kill9();

    sim.thaw_acme();
    let server = Binary::start_logged(&data, Some(&s.config_file), "trace", Some(&log));
    wait_acme(server.addr, &key, &domains, "mapped", LIMIT).await;
    assert_eq!(
        sim.count("POST /api/acme/v2/account"),
        1,
        "no second create"
    );
    let accounts = sim.acme_accounts();
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_eq!(accounts[0].domains, domains);

    // The host gets the account's EAB; certline's log never holds the HMAC key.
    let reply = call(server.addr, &format!("command acme apikey {key}")).await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(
        reply.data.as_deref(),
        Some(format!("server={ACME_SERVER} kid={} hmac={}", pool[0].0, pool[0].1).as_str())
    );
    drop(server);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("ACME"),
        "the log is not empty: {}",
        text.len()
    );
    assert!(
        !text.contains(&pool[0].1),
        "the HMAC key reached certline's log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_domains_over_twenty_keys_through_20_percent_faults_map_exactly_once() {
    let sim = ScmSim::start().await;
    sim.set_eab_pool(&eab_pool(20));
    let groups: Vec<Vec<String>> = (0..20).map(|k| names(10, &format!("f{k}-"))).collect();
    for g in &groups {
        seed_validated(&sim, g);
    }
    sim.set_random_failure_rate(0.2, 12);
    let s = setup(&sim, OPEN, "");
    let server = start(&s).await;
    let mut keys = Vec::new();
    for g in &groups {
        keys.push(register(server.addr, g).await);
    }
    for (key, g) in keys.iter().zip(&groups) {
        wait_acme(server.addr, key, g, "mapped", Duration::from_secs(180)).await;
    }
    sim.clear_faults();
    assert_eq!(sim.acme_accounts().len(), 20, "one account per key");
    for (key, g) in keys.iter().zip(&groups) {
        assert_eq!(&account_of(&sim, key).unwrap().domains, g);
        for d in g {
            assert_eq!(sim.acme_mapped_times(d), 1, "{d}");
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_name_awaiting_delegation_approval_stays_out_of_the_account() {
    let sim = ScmSim::start().await;
    sim.set_eab_pool(&eab_pool(2));
    let good = names(2, "ok");
    seed_validated(&sim, &good);
    // In SCM and DCV validated, but its delegation still waits for an MRAO: SCM answers
    // `notAddedDomains` for it.
    let waiting = "wait.example.edu".to_string();
    seed_validated(&sim, std::slice::from_ref(&waiting));
    sim.set_delegation_requested(&waiting);
    let s = setup(&sim, OPEN, "");
    let server = start(&s).await;
    let mut all = good.clone();
    all.push(waiting.clone());
    let key = register(server.addr, &all).await;
    wait_acme(server.addr, &key, &good, "mapped", LIMIT).await;
    // The bridge holds a name whose delegation awaits approval back
    // (awaiting_delegation_approval), so it is never offered to the account.
    wait_acme(
        server.addr,
        &key,
        std::slice::from_ref(&waiting),
        "pending",
        LIMIT,
    )
    .await;
    assert_eq!(account_of(&sim, &key).unwrap().domains, good);
    assert_eq!(sim.acme_mapped_times(&waiting), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_acme_command_answers_only_what_the_operator_enabled() {
    // ACME on, hand-out off: 404, though the account exists.
    let sim = ScmSim::start().await;
    sim.set_eab_pool(&eab_pool(4));
    let domains = names(1, "h");
    seed_validated(&sim, &domains);
    let s = setup(&sim, OPEN, "");
    let server = start(&s).await;
    let key = register(server.addr, &domains).await;
    wait_acme(server.addr, &key, &domains, "mapped", LIMIT).await;
    let reply = call(server.addr, &format!("command acme apikey {key}")).await;
    assert_eq!(reply.code(), 404, "{reply:?}");
    assert!(reply.text.contains("not offered"), "{reply:?}");
    server.stop().await;

    // Hand-out on, confirmation required (which needs [admin] for the confirm links): an
    // unconfirmed key gets 409; unknown keys 401.
    let admin_dir = tempfile::tempdir().unwrap();
    let s = setup(
        &sim,
        "",
        &format!(
            "hand_out_eab = true\n{}",
            support::admin::admin_toml(admin_dir.path())
        ),
    );
    let server = start(&s).await;
    let key = register(server.addr, &names(1, "u")).await;
    let reply = call(server.addr, &format!("command acme apikey {key}")).await;
    assert_eq!(reply.code(), 409, "{reply:?}");
    assert!(reply.text.contains("not confirmed"), "{reply:?}");
    let reply = call(server.addr, "command acme apikey 0000000000000000-unknown").await;
    assert_eq!(reply.code(), 401, "{reply:?}");
    server.stop().await;

    // Without [sectigo.acme] at all: 404.
    let server = InProcess::start().await;
    let key = support::client::new_key(server.addr).await;
    let reply = call(server.addr, &format!("command acme apikey {key}")).await;
    assert_eq!(reply.code(), 404, "{reply:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shared_account_holds_every_keys_names_and_keeps_a_name_another_key_holds() {
    let sim = ScmSim::start().await;
    sim.set_eab_pool(&eab_pool(1));
    let shared = sim.add_acme_account("example.edu hosts", support::acme_setup::ORG);
    let x: Vec<String> = (1..=3).map(|i| format!("x{i}.example.edu")).collect();
    seed_validated(&sim, &x);
    let s = setup(
        &sim,
        OPEN,
        &format!("accounts = \"shared\"\naccount_id = {shared}"),
    );
    let server = start(&s).await;
    let key_a = register(server.addr, &x[..2]).await;
    let key_b = register(server.addr, &x[1..]).await;
    wait_acme(server.addr, &key_a, &x[..2], "mapped", LIMIT).await;
    wait_acme(server.addr, &key_b, &x[1..], "mapped", LIMIT).await;
    let (_, account, _) = acme_state(server.addr, &key_a, &x[0]).await;
    assert_eq!(account, Some(shared));
    assert_eq!(sim.acme_accounts()[0].domains, x);

    // A lets go of x2, which B still holds: it stays.
    let reply = call(
        server.addr,
        &format!("command remove apikey {key_a} domain {}", x[1]),
    )
    .await;
    assert!(reply.is_ok());
    let hash_a = ApiKey::parse(&key_a).unwrap().hash();
    wait_until(LIMIT, "A's pass after the removal", || async {
        done_or(
            server
                .store
                .acme_key(&hash_a)
                .await
                .unwrap()
                .is_some_and(|r| !r.domains.contains_key(&x[1])),
            sim.acme_accounts(),
        )
    })
    .await;
    assert_eq!(sim.acme_accounts()[0].domains, x);

    // B is revoked: its names leave the account (x2 now has no holder), the account stays.
    let hash_b = ApiKey::parse(&key_b).unwrap().hash();
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    server
        .store
        .revoke_key(&hash_b, ip, chrono::Utc::now().timestamp())
        .await
        .unwrap();
    wait_until(LIMIT, "B's names to leave the shared account", || async {
        done_or(
            sim.acme_accounts()[0].domains == [x[0].clone()],
            sim.acme_accounts(),
        )
    })
    .await;
    assert_eq!(sim.acme_accounts().len(), 1);
    assert_eq!(
        sim.count("POST /api/acme/v2/account"),
        0,
        "shared: never creates"
    );
    server.stop().await;
}
