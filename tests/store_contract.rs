//! The store contract (issue 16): what the service, bridge, admin and confirmation layers
//! may rely on, checked through the facade [`Store`] against both backends. The PostgreSQL
//! tests use the real server every development and CI machine of this project runs at
//! 127.0.0.1:5432 (user postgres, trust authentication, database `test`); each works in a
//! schema of its own (`t_<random>`), dropped at the end even when the test panics. The sled
//! tests (`sled_*`) open an embedded store in a temporary directory.
//!
//! The checks are functions of the store (`check_*(&S, ...)`). The checks of one store run
//! on both backends; those taking two stores run on sled with one store passed twice
//! (concurrent callers of one process) where the contract is the same, and the tests of
//! what only several instances have (leases, heartbeats, migrations racing, a server going
//! away) run on PostgreSQL only, opening two stores on one schema as two certline processes
//! would.
//!
//! Without a reachable PostgreSQL these tests fail, naming the address: they never skip.

mod support;

use certline::apikey::{ApiKey, KeyHash};
use certline::domain::{Domain, normalize};
use certline::store::postgres::PostgresConfig;
use certline::store::{
    AcmeKeyRecord, AddOutcome, AuditKind, BridgePhase, CapExceeded, ClaimCaps, ClaimOutcome,
    LinkAction, LinkOutcome, LinkToken, OperatorConfirmOutcome, RequeueOutcome,
};
use certline::store::{DurabilityMode, Store, Timing};
use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use support::postgres::{SERVER, TestSchema};

/// The store under test: the facade, on either backend.
type S = Store;

/// Opening the store under test on a test's schema.
trait OpenStore {
    async fn store(&self, instance: &str) -> S;
    async fn store_with_lease(&self, instance: &str, lease_secs: u64) -> S;
}

impl OpenStore for TestSchema {
    async fn store(&self, instance: &str) -> S {
        self.store_with_lease(instance, 300).await
    }

    async fn store_with_lease(&self, instance: &str, lease_secs: u64) -> S {
        Store::open_postgres(&self.config(instance, lease_secs))
            .await
            .unwrap_or_else(|e| panic!("connecting to PostgreSQL at {SERVER}: {e}"))
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn domain(s: &str) -> Domain {
    normalize(s).unwrap()
}

fn key() -> KeyHash {
    ApiKey::generate().hash()
}

async fn audit_kinds(s: &S) -> Vec<AuditKind> {
    s.audit_events(None, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.kind)
        .collect()
}

async fn new_key(s: &S, hash: &KeyHash) {
    let outcome = s
        .create_key(hash, None, &ClaimCaps::default(), ip("192.0.2.1"), 0)
        .await
        .unwrap();
    assert_eq!(outcome, ClaimOutcome::Claimed);
}

fn token(key: &KeyHash, action: LinkAction, expires_at: i64) -> LinkToken {
    LinkToken {
        key_hash: key.0,
        action,
        created_at: 0,
        expires_at,
        used_at: None,
    }
}

// ---------------------------------------------------------------------------------------
// Keys and claims

async fn check_claim_outcomes(s: &S) {
    let caps = ClaimCaps::default();
    let from = ip("192.0.2.1");
    let plain = key();
    assert_eq!(
        s.create_key(&plain, None, &caps, from, 10).await.unwrap(),
        ClaimOutcome::Claimed
    );
    let record = s.key(&plain).await.unwrap().unwrap();
    assert_eq!((record.created_at, record.creator_ip), (10, from));
    assert_eq!((record.email, record.domain_count), (None, 0));

    assert_eq!(
        s.claim_key(&plain, false, "Owner@X.org", &caps, from, 11)
            .await
            .unwrap(),
        ClaimOutcome::Claimed
    );
    let record = s.key(&plain).await.unwrap().unwrap();
    assert_eq!(record.email.as_deref(), Some("Owner@X.org"));
    assert_eq!(record.claimed_at, Some(11));
    assert_eq!(
        s.claim_key(&plain, false, "owner@x.ORG", &caps, from, 12)
            .await
            .unwrap(),
        ClaimOutcome::AlreadyClaimed,
        "addresses compare case-insensitively"
    );
    assert_eq!(
        s.claim_key(&plain, false, "other@x.org", &caps, from, 12)
            .await
            .unwrap(),
        ClaimOutcome::ClaimedByOther
    );
    let unknown = key();
    assert_eq!(
        s.claim_key(&unknown, false, "a@x.org", &caps, from, 13)
            .await
            .unwrap(),
        ClaimOutcome::Unknown
    );
    assert_eq!(s.key(&unknown).await.unwrap(), None);
    assert_eq!(
        s.claim_key(&unknown, true, "a@x.org", &caps, from, 14)
            .await
            .unwrap(),
        ClaimOutcome::Claimed,
        "a client-made key is created by its claim"
    );
    assert_eq!(s.key(&unknown).await.unwrap().unwrap().created_at, 14);

    assert!(s.revoke_key(&plain, from, 15).await.unwrap());
    assert!(s.revoke_key(&plain, from, 16).await.unwrap(), "idempotent");
    assert_eq!(s.key(&plain).await.unwrap().unwrap().revoked_at, Some(15));
    assert!(!s.revoke_key(&key(), from, 16).await.unwrap());
    assert_eq!(
        s.claim_key(&plain, true, "owner@x.org", &caps, from, 17)
            .await
            .unwrap(),
        ClaimOutcome::Revoked
    );

    let kinds = audit_kinds(s).await;
    let revoked = kinds
        .iter()
        .filter(|k| **k == AuditKind::KeyRevoked)
        .count();
    assert_eq!(revoked, 1, "a second revocation changes nothing: {kinds:?}");
    assert_eq!(
        kinds,
        vec![
            AuditKind::KeyCreated,
            AuditKind::KeyClaimed {
                email: "Owner@X.org".into()
            },
            AuditKind::KeyCreated,
            AuditKind::KeyClaimed {
                email: "a@x.org".into()
            },
            AuditKind::KeyRevoked,
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn claims_have_every_outcome_and_are_audited_once() {
    let schema = TestSchema::new().await;
    let s = schema.store("a").await;
    check_claim_outcomes(&s).await;
    s.close().await.unwrap();
}

async fn check_caps(s: &S) {
    let caps = ClaimCaps {
        max_unconfirmed_keys_per_email: 2,
        max_new_emails_per_address_per_day: 2,
    };
    let from = ip("192.0.2.1");
    let claim = async |email: &str, from: IpAddr, now: i64| {
        s.create_key(&key(), Some(email), &caps, from, now)
            .await
            .unwrap()
    };
    assert_eq!(claim("a@x.org", from, 0).await, ClaimOutcome::Claimed);
    assert_eq!(claim("A@x.org", from, 0).await, ClaimOutcome::Claimed);
    assert_eq!(
        claim("a@X.ORG", from, 0).await,
        ClaimOutcome::Capped(CapExceeded::UnconfirmedKeys),
        "the address holds two unconfirmed keys; case does not matter"
    );
    assert_eq!(claim("b@x.org", from, 0).await, ClaimOutcome::Claimed);
    assert_eq!(
        claim("c@x.org", from, 10).await,
        ClaimOutcome::Capped(CapExceeded::NewEmails),
        "third new address from one source address in a day"
    );
    assert_eq!(
        claim("c@x.org", ip("192.0.2.2"), 10).await,
        ClaimOutcome::Claimed
    );
    assert_eq!(
        claim("d@x.org", from, 86_400).await,
        ClaimOutcome::Claimed,
        "a new day"
    );
    // A confirmed key no longer counts against its address.
    let keys = s.keys_after(None, 100).await.unwrap();
    let (held, _) = keys
        .iter()
        .find(|(_, r)| r.email.as_deref() == Some("a@x.org"))
        .unwrap();
    s.confirm_key(held, from, 20).await.unwrap();
    assert_eq!(claim("a@x.org", from, 21).await, ClaimOutcome::Claimed);
    // Refused claims wrote nothing: no key, no audit event, no counted address.
    let claimed: Vec<_> = audit_kinds(s)
        .await
        .into_iter()
        .filter(|k| matches!(k, AuditKind::KeyClaimed { .. }))
        .collect();
    assert_eq!(claimed.len(), 6, "{claimed:?}");
    assert_eq!(s.keys_after(None, 100).await.unwrap().len(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn claim_caps_refuse_the_claim_over_the_limit_and_only_that() {
    let schema = TestSchema::new().await;
    let s = schema.store("a").await;
    check_caps(&s).await;
}

/// Many claims at once from two instances: the caps are never overspent.
async fn check_caps_under_a_race(a: Arc<S>, b: Arc<S>) {
    let caps = ClaimCaps {
        max_unconfirmed_keys_per_email: 7,
        max_new_emails_per_address_per_day: 5,
    };
    let mut tasks = Vec::new();
    for i in 0..50 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            s.claim_key(&key(), true, "racer@x.org", &caps, ip("192.0.2.9"), 100)
                .await
                .unwrap()
        }));
    }
    let mut claimed = 0;
    for task in tasks {
        match task.await.unwrap() {
            ClaimOutcome::Claimed => claimed += 1,
            ClaimOutcome::Capped(CapExceeded::UnconfirmedKeys) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(claimed, 7, "exactly the cap of unconfirmed keys");

    // 30 new addresses from one source address: exactly 5 per day (one was used above).
    let mut tasks = Vec::new();
    for i in 0..30 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            s.create_key(
                &key(),
                Some(&format!("new{i}@x.org")),
                &caps,
                ip("192.0.2.9"),
                100,
            )
            .await
            .unwrap()
        }));
    }
    let mut claimed = 0;
    for task in tasks {
        match task.await.unwrap() {
            ClaimOutcome::Claimed => claimed += 1,
            ClaimOutcome::Capped(CapExceeded::NewEmails) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(claimed, 4, "five new addresses a day, one spent by racer@");
}

#[tokio::test(flavor = "multi_thread")]
async fn claim_caps_hold_when_two_instances_race() {
    let schema = TestSchema::new().await;
    let a = Arc::new(schema.store("a").await);
    let b = Arc::new(schema.store("b").await);
    check_caps_under_a_race(a, b).await;
}

// ---------------------------------------------------------------------------------------
// Domains

async fn check_add_remove(a: Arc<S>, b: Arc<S>) {
    let hash = key();
    new_key(&a, &hash).await;
    let from = ip("192.0.2.1");
    let www = domain("www.x.org");
    assert_eq!(
        a.add_domain(&hash, &www, from, 5).await.unwrap(),
        AddOutcome::Added
    );
    assert_eq!(
        b.add_domain(&hash, &www, from, 6).await.unwrap(),
        AddOutcome::AlreadyRegistered
    );
    assert_eq!(
        a.key_domain(&hash, &www).await.unwrap().unwrap().added_at,
        5
    );
    assert_eq!(
        a.domain("www.x.org").await.unwrap().unwrap().first_added_at,
        5
    );
    assert_eq!(
        a.add_domain(&key(), &www, from, 6).await.unwrap(),
        AddOutcome::UnknownKey
    );
    assert_eq!(a.key(&hash).await.unwrap().unwrap().domain_count, 1);
    assert!(b.remove_domain(&hash, &www, from, 7).await.unwrap());
    assert!(!a.remove_domain(&hash, &www, from, 8).await.unwrap());
    assert_eq!(a.key(&hash).await.unwrap().unwrap().domain_count, 0);
    assert_eq!(a.key_domain(&hash, &www).await.unwrap(), None);
    assert!(
        a.domain("www.x.org").await.unwrap().is_some(),
        "the domain's record stays"
    );

    // Concurrent adds and removes on both instances, each name twice: the count is exact.
    let mut tasks = Vec::new();
    for i in 0..60 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let d = domain(&format!("h{}.x.org", i % 30));
            s.add_domain(&hash, &d, ip("192.0.2.1"), 9).await.unwrap()
        }));
    }
    let mut added = 0;
    for task in tasks {
        added += usize::from(task.await.unwrap() == AddOutcome::Added);
    }
    assert_eq!(added, 30, "each name added once");
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let d = domain(&format!("h{}.x.org", i % 10));
            s.remove_domain(&hash, &d, ip("192.0.2.1"), 10)
                .await
                .unwrap()
        }));
    }
    let mut removed = 0;
    for task in tasks {
        removed += usize::from(task.await.unwrap());
    }
    assert_eq!(removed, 10, "each name removed once");
    let listed = a.key_domains(&hash, 0, 1000).await.unwrap();
    assert_eq!(listed.len(), 20);
    assert_eq!(a.key(&hash).await.unwrap().unwrap().domain_count, 20);
    let kinds = audit_kinds(&a).await;
    let adds = kinds
        .iter()
        .filter(|k| matches!(k, AuditKind::DomainAdded { .. }))
        .count();
    assert_eq!(adds, 31, "one event per change, none for a repeat");
}

#[tokio::test(flavor = "multi_thread")]
async fn add_and_remove_are_idempotent_and_keep_the_domain_count() {
    let schema = TestSchema::new().await;
    let a = Arc::new(schema.store("a").await);
    let b = Arc::new(schema.store("b").await);
    check_add_remove(a, b).await;
}

async fn check_key_domain_pages(s: &S) {
    let hash = key();
    new_key(s, &hash).await;
    let names = [
        "b.example.org",
        "a.example.org:8443",
        "a.example.org",
        "a-b.example.org",
        "a0.example.org",
        "z.example.net",
        "xn--bcher-kva.example",
        "a.example.org:444",
        "m.example.com",
        "a.example.org.uk",
    ];
    for name in names {
        s.add_domain(&hash, &domain(name), ip("192.0.2.1"), 0)
            .await
            .unwrap();
    }
    let mut expected: Vec<String> = names.iter().map(|n| domain(n).to_string()).collect();
    expected.sort(); // byte order, as sled lists them
    assert_eq!(s.key_domains(&hash, 0, 100).await.unwrap(), expected);
    let mut paged = Vec::new();
    for offset in (0..expected.len()).step_by(3) {
        paged.extend(s.key_domains(&hash, offset, 3).await.unwrap());
    }
    assert_eq!(paged, expected);
    assert_eq!(s.key_domains(&hash, 9, 100).await.unwrap(), expected[9..]);
    assert!(s.key_domains(&hash, 10, 100).await.unwrap().is_empty());
    assert!(s.key_domains(&key(), 0, 100).await.unwrap().is_empty());
    assert_eq!(s.key(&hash).await.unwrap().unwrap().domain_count, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn key_domains_page_in_byte_order_by_offset() {
    let schema = TestSchema::new().await;
    let s = schema.store("a").await;
    check_key_domain_pages(&s).await;
}

async fn check_holders(s: &S) {
    let mut both = [key(), key()];
    for k in &both {
        new_key(s, k).await;
    }
    let shared = domain("www.example.org");
    let only_a = domain("www.example.org:8443");
    let [a, b] = both;
    s.add_domain(&a, &shared, ip("192.0.2.1"), 0).await.unwrap();
    s.add_domain(&b, &shared, ip("192.0.2.1"), 0).await.unwrap();
    s.add_domain(&a, &only_a, ip("192.0.2.1"), 0).await.unwrap();
    s.add_domain(&b, &only_a, ip("192.0.2.1"), 0).await.unwrap();
    s.remove_domain(&b, &only_a, ip("192.0.2.1"), 0)
        .await
        .unwrap();
    both.sort_by_key(|h| h.0);
    assert_eq!(
        s.holders_of("www.example.org").await.unwrap(),
        both.to_vec()
    );
    assert_eq!(s.holders_of("www.example.org:8443").await.unwrap(), vec![a]);
    assert!(s.holders_of("nobody.example").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn holders_of_lists_the_keys_holding_a_domain_in_hash_order() {
    let schema = TestSchema::new().await;
    let s = schema.store("a").await;
    check_holders(&s).await;
}

// ---------------------------------------------------------------------------------------
// Audit

async fn check_audit(s: &S) {
    let hash = key();
    new_key(s, &hash).await;
    s.add_domain(&hash, &domain("a.x.org"), ip("192.0.2.7"), 3)
        .await
        .unwrap();
    // A refused claim writes no event.
    let none = ClaimCaps {
        max_unconfirmed_keys_per_email: 0,
        max_new_emails_per_address_per_day: 0,
    };
    assert!(matches!(
        s.claim_key(&hash, false, "a@x.org", &none, ip("192.0.2.7"), 4)
            .await
            .unwrap(),
        ClaimOutcome::Capped(_)
    ));
    let bridge = AuditKind::Bridge {
        domain: "a.x.org".into(),
        step: "create".into(),
        detail: "ok".into(),
    };
    s.record_event(bridge.clone(), 5).await.unwrap();
    let events = s.audit_events(None, 100).await.unwrap();
    let kinds: Vec<_> = events.iter().map(|(_, e)| e.kind.clone()).collect();
    assert_eq!(
        kinds,
        vec![
            AuditKind::KeyCreated,
            AuditKind::DomainAdded {
                domain: "a.x.org".into()
            },
            bridge
        ]
    );
    let (_, added) = &events[1];
    assert_eq!((added.at, added.ip), (3, ip("192.0.2.7")));
    assert_eq!(added.key_id, hash.id());
    assert_eq!(events[2].1.key_id, "-");
    assert!(events.windows(2).all(|w| w[0].0 < w[1].0), "oldest first");
    // Paging by sequence number.
    let first = s.audit_events(None, 1).await.unwrap();
    assert_eq!(first, events[..1]);
    let rest = s.audit_events(Some(first[0].0), 100).await.unwrap();
    assert_eq!(rest, events[1..]);
    assert!(
        s.audit_events(Some(events[2].0), 100)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_events_are_oldest_first_paged_and_only_for_committed_changes() {
    let schema = TestSchema::new().await;
    let s = schema.store("a").await;
    check_audit(&s).await;
}

// ---------------------------------------------------------------------------------------
// Links and confirmation

async fn check_links(s: &S) {
    s.enable_bridge();
    let from = ip("192.0.2.1");
    let hash = key();
    s.create_key(&hash, Some("a@x.org"), &ClaimCaps::default(), from, 0)
        .await
        .unwrap();
    s.add_domain(&hash, &domain("www.x.org:8443"), from, 0)
        .await
        .unwrap();
    let mut parked = s.bridge("www.x.org").await.unwrap().unwrap();
    assert!(!parked.key_confirmed);
    parked.phase = BridgePhase::AwaitingConfirmation;
    parked.next_attempt_at = None;
    s.save_bridge("www.x.org", &parked).await.unwrap();
    assert!(s.due_bridge_jobs(i64::MAX, 10).await.unwrap().is_empty());

    s.save_link_tokens(&[
        ([1; 32], token(&hash, LinkAction::Confirm, 100)),
        ([2; 32], token(&hash, LinkAction::Revoke, 100)),
    ])
    .await
    .unwrap();
    assert_eq!(
        s.use_link(&[1; 32], LinkAction::Revoke, from, 5)
            .await
            .unwrap(),
        LinkOutcome::Unknown,
        "a confirm token does not revoke"
    );
    assert_eq!(
        s.use_link(&[1; 32], LinkAction::Confirm, from, 100)
            .await
            .unwrap(),
        LinkOutcome::Expired
    );
    assert_eq!(
        s.use_link(&[1; 32], LinkAction::Confirm, from, 99)
            .await
            .unwrap(),
        LinkOutcome::Confirmed {
            key_id: hash.id(),
            requeued: 1
        }
    );
    assert_eq!(s.key(&hash).await.unwrap().unwrap().confirmed_at, Some(99));
    let released = s.bridge("www.x.org").await.unwrap().unwrap();
    assert!(released.key_confirmed);
    assert_eq!(released.phase, BridgePhase::Queued);
    assert_eq!(s.due_bridge_jobs(i64::MAX, 10).await.unwrap().len(), 1);
    assert_eq!(
        s.use_link(&[1; 32], LinkAction::Confirm, from, 99)
            .await
            .unwrap(),
        LinkOutcome::AlreadyUsed
    );
    assert_eq!(
        s.confirm_key(&hash, from, 120).await.unwrap(),
        OperatorConfirmOutcome::Confirmed {
            confirmed_at: 99,
            already: true,
            requeued: 0
        }
    );
    assert_eq!(
        s.use_link(&[2; 32], LinkAction::Revoke, from, 50)
            .await
            .unwrap(),
        LinkOutcome::Revoked { key_id: hash.id() }
    );
    assert_eq!(s.key(&hash).await.unwrap().unwrap().revoked_at, Some(50));
    assert_eq!(
        s.use_link(&[3; 32], LinkAction::Revoke, from, 50)
            .await
            .unwrap(),
        LinkOutcome::Unknown
    );
    assert_eq!(
        s.confirm_key(&hash, from, 130).await.unwrap(),
        OperatorConfirmOutcome::KeyRevoked
    );
    assert_eq!(
        s.confirm_key(&key(), from, 130).await.unwrap(),
        OperatorConfirmOutcome::Unknown
    );
    // A confirm link of a revoked key is refused and stays unused.
    let other = key();
    new_key(s, &other).await;
    s.revoke_key(&other, from, 1).await.unwrap();
    s.save_link_tokens(&[([4; 32], token(&other, LinkAction::Confirm, 100))])
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            s.use_link(&[4; 32], LinkAction::Confirm, from, 2)
                .await
                .unwrap(),
            LinkOutcome::KeyRevoked
        );
    }
    let kinds = audit_kinds(s).await;
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == AuditKind::KeyConfirmed)
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn links_work_once_confirm_or_revoke_and_release_waiting_domains() {
    let schema = TestSchema::new().await;
    let s = schema.store("a").await;
    check_links(&s).await;
}

/// Two uses of one link at once, on two instances: exactly one wins.
#[tokio::test(flavor = "multi_thread")]
async fn a_link_used_twice_at_once_on_two_instances_works_once() {
    let schema = TestSchema::new().await;
    let a = Arc::new(schema.store("a").await);
    let b = Arc::new(schema.store("b").await);
    let mut tokens = Vec::new();
    for n in 0..10u8 {
        let hash = key();
        new_key(&a, &hash).await;
        tokens.push(([n; 32], token(&hash, LinkAction::Confirm, 100)));
    }
    a.save_link_tokens(&tokens).await.unwrap();
    let mut tasks = Vec::new();
    for n in 0..10u8 {
        for s in [a.clone(), b.clone()] {
            tasks.push(tokio::spawn(async move {
                s.use_link(&[n; 32], LinkAction::Confirm, ip("192.0.2.1"), 5)
                    .await
                    .unwrap()
            }));
        }
    }
    let mut confirmed = 0;
    for task in tasks {
        match task.await.unwrap() {
            LinkOutcome::Confirmed { .. } => confirmed += 1,
            LinkOutcome::AlreadyUsed => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(confirmed, 10);
}

// ---------------------------------------------------------------------------------------
// Mail outbox

async fn check_mail(a: &S, b: &S) {
    let from = ip("192.0.2.1");
    let hash = key();
    a.create_key(&hash, Some("a@x.org"), &ClaimCaps::default(), from, 0)
        .await
        .unwrap();
    assert_eq!(a.mail_outbox_len().await.unwrap(), 0, "mail is off");
    a.enable_confirmation_mail();
    let claimed = key();
    a.claim_key(&claimed, true, "b@x.org", &ClaimCaps::default(), from, 10)
        .await
        .unwrap();
    assert_eq!(a.mail_outbox_len().await.unwrap(), 1);
    assert!(a.due_mail(9, 10).await.unwrap().is_empty(), "not due yet");
    let due = a.due_mail(10, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    let mail = &due[0];
    assert_eq!(mail.key, claimed);
    assert_eq!(
        (mail.job.email.as_str(), mail.job.ip, mail.job.claimed_at),
        ("b@x.org", from, 10)
    );
    assert_eq!(mail.job.attempts, 0);
    assert!(
        b.due_mail(10, 10).await.unwrap().is_empty(),
        "leased to the instance that took it"
    );
    assert!(
        b.finish_mail(mail)
            .await
            .unwrap_err()
            .to_string()
            .contains("another instance")
    );
    a.retry_mail(mail, 50).await.unwrap();
    assert!(a.due_mail(49, 10).await.unwrap().is_empty());
    let again = b.due_mail(50, 10).await.unwrap();
    assert_eq!(again.len(), 1, "a retry releases the lease");
    assert_eq!(again[0].job.attempts, 1);
    b.finish_mail(&again[0]).await.unwrap();
    assert_eq!(a.mail_outbox_len().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mail_outbox_is_due_leased_retried_and_finished() {
    let schema = TestSchema::new().await;
    let a = schema.store("a").await;
    let b = schema.store("b").await;
    check_mail(&a, &b).await;
}

// ---------------------------------------------------------------------------------------
// Bridge

async fn check_bridge_queueing(a: &S, b: &S) {
    let from = ip("192.0.2.1");
    let hash = key();
    new_key(a, &hash).await;
    a.add_domain(&hash, &domain("off.x.org"), from, 1)
        .await
        .unwrap();
    assert_eq!(a.bridge("off.x.org").await.unwrap(), None, "bridge off");
    a.enable_bridge();
    // Another instance's worker hears of the registration (LISTEN/NOTIFY).
    let woken = tokio::time::timeout(Duration::from_secs(10), b.bridge_queued());
    let (result, _) = tokio::join!(woken, async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        a.add_domain(&hash, &domain("www.x.org:8443"), from, 2)
            .await
            .unwrap();
    });
    result.expect("the other instance's worker was woken");
    let record = a.bridge("www.x.org").await.unwrap().unwrap();
    assert_eq!(record.phase, BridgePhase::Queued);
    assert_eq!(record.next_attempt_at, Some(2));
    a.add_domain(&hash, &domain("www.x.org"), from, 3)
        .await
        .unwrap();
    assert_eq!(
        a.bridge("www.x.org")
            .await
            .unwrap()
            .unwrap()
            .next_attempt_at,
        Some(2),
        "one record per host"
    );
    assert_eq!(a.outbox_len().await.unwrap(), 1);
    assert_eq!(a.next_bridge_due().await.unwrap(), Some(2));
    assert!(a.ensure_bridge_record("x.org", false, 4).await.unwrap());
    assert!(!a.ensure_bridge_record("x.org", true, 5).await.unwrap());
    assert_eq!(a.outbox_len().await.unwrap(), 2);
    assert_eq!(a.backfill_bridge(6).await.unwrap(), 1, "off.x.org");
    assert_eq!(
        a.bridge("off.x.org")
            .await
            .unwrap()
            .unwrap()
            .next_attempt_at,
        Some(6)
    );
    let counts = a.bridge_phase_counts().await.unwrap();
    assert_eq!(counts.get(&BridgePhase::Queued), Some(&3));

    // Parked by a 401, released at once with new credentials.
    let mut parked = a.bridge("x.org").await.unwrap().unwrap();
    parked.waiting_on_credentials = true;
    parked.phase = BridgePhase::Lookup;
    parked.next_attempt_at = Some(1_000_000);
    a.save_bridge("x.org", &parked).await.unwrap();
    assert!(a.has_credential_waiters().await.unwrap());
    assert_eq!(a.release_credential_waiters(7).await.unwrap(), 1);
    let released = a.bridge("x.org").await.unwrap().unwrap();
    assert_eq!(released.next_attempt_at, Some(7));
    assert!(released.waiting_on_credentials);

    // Synced subdomains follow their validation domain.
    for host in ["www.x.org", "off.x.org"] {
        let mut r = a.bridge(host).await.unwrap().unwrap();
        r.phase = BridgePhase::Synced;
        r.dcv_domain = Some("x.org".into());
        r.next_attempt_at = Some(1_000_000);
        a.save_bridge(host, &r).await.unwrap();
    }
    assert_eq!(a.wake_dcv_dependents("x.org", 8).await.unwrap(), 2);
    assert_eq!(
        a.bridge("off.x.org")
            .await
            .unwrap()
            .unwrap()
            .next_attempt_at,
        Some(8)
    );
    let counts = a.bridge_phase_counts().await.unwrap();
    assert_eq!(counts.get(&BridgePhase::Synced), Some(&2));
    assert_eq!(counts.get(&BridgePhase::Lookup), Some(&1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registration_queues_its_host_for_the_bridge_and_wakes_every_instance() {
    let schema = TestSchema::new().await;
    let a = schema.store("a").await;
    let b = schema.store("b").await;
    check_bridge_queueing(&a, &b).await;
}

async fn check_confirmed_wins_over_a_stale_save(s: &S) {
    s.enable_bridge();
    let from = ip("192.0.2.1");
    let hash = key();
    new_key(s, &hash).await;
    s.add_domain(&hash, &domain("www.x.org"), from, 0)
        .await
        .unwrap();
    let stale = s.bridge("www.x.org").await.unwrap().unwrap();
    s.confirm_key(&hash, from, 5).await.unwrap();
    let mut parked = stale;
    parked.phase = BridgePhase::AwaitingConfirmation;
    parked.next_attempt_at = None;
    s.save_bridge("www.x.org", &parked).await.unwrap();
    let saved = s.bridge("www.x.org").await.unwrap().unwrap();
    assert!(saved.key_confirmed);
    assert_eq!(saved.phase, BridgePhase::Queued);
    assert_eq!(s.due_bridge_jobs(i64::MAX, 10).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_confirmation_is_not_undone_by_a_worker_saving_an_older_copy() {
    let schema = TestSchema::new().await;
    let s = schema.store("a").await;
    check_confirmed_wins_over_a_stale_save(&s).await;
}

/// Two instances take due domains at once: no domain goes to both; the domains of an
/// instance that stops (dies) go to the other after the lease; the dead one's late save is
/// refused.
async fn check_bridge_leases(a: Arc<S>, b: Arc<S>, c: Arc<S>, lease: Duration) {
    a.enable_bridge();
    b.enable_bridge();
    let hash = key();
    new_key(&a, &hash).await;
    for i in 0..40 {
        a.add_domain(
            &hash,
            &domain(&format!("d{i:02}.x.org")),
            ip("192.0.2.1"),
            i,
        )
        .await
        .unwrap();
    }
    let (ta, tb) = tokio::join!(
        tokio::spawn({
            let a = a.clone();
            async move { a.due_bridge_jobs(1_000, 25).await.unwrap() }
        }),
        tokio::spawn({
            let b = b.clone();
            async move { b.due_bridge_jobs(1_000, 25).await.unwrap() }
        }),
    );
    let (ja, jb) = (ta.unwrap(), tb.unwrap());
    let names = |jobs: &[(String, certline::store::BridgeRecord)]| {
        jobs.iter().map(|(d, _)| d.clone()).collect::<BTreeSet<_>>()
    };
    let (na, nb) = (names(&ja), names(&jb));
    assert!(
        na.is_disjoint(&nb),
        "a domain was handed to both: {na:?} {nb:?}"
    );
    assert_eq!(na.len() + nb.len(), 40);
    for jobs in [&ja, &jb] {
        let dues: Vec<_> = jobs.iter().map(|(_, r)| r.next_attempt_at).collect();
        assert!(dues.windows(2).all(|w| w[0] <= w[1]), "earliest first");
    }
    // Nothing more to take for either while the leases hold; a's own are handed to a again.
    assert!(b.due_bridge_jobs(1_000, 100).await.unwrap().len() == nb.len());
    assert_eq!(names(&a.due_bridge_jobs(1_000, 100).await.unwrap()), na);

    // b finishes one domain: the record rests, the lease is released.
    let (done, mut record) = jb[0].clone();
    record.phase = BridgePhase::Synced;
    record.next_attempt_at = Some(1_000_000);
    b.save_bridge(&done, &record).await.unwrap();
    // b goes on with another domain step by step: a save still due keeps the lease.
    let (busy, mut step) = jb[1].clone();
    step.phase = BridgePhase::Lookup;
    b.save_bridge(&busy, &step).await.unwrap();
    a.save_bridge(&busy, &step).await.expect_err("b holds it");

    // b dies (stops without saving the rest). After the lease, a takes its domains.
    b.close().await.unwrap();
    tokio::time::sleep(lease + Duration::from_millis(500)).await;
    let taken = names(&a.due_bridge_jobs(1_000, 100).await.unwrap());
    let expected: BTreeSet<_> = (0..40)
        .map(|i| format!("d{i:02}.x.org"))
        .filter(|d| *d != done)
        .collect();
    assert_eq!(taken, expected, "a took over what b had left");

    // A third instance takes nothing while a holds it; b's late save (as if b were alive
    // but slow; c stands in for it) is refused once another instance holds the domain.
    assert!(c.due_bridge_jobs(1_000, 100).await.unwrap().is_empty());
    let refused = c.save_bridge(&busy, &step).await.unwrap_err().to_string();
    assert!(refused.contains("another instance"), "{refused}");
    assert!(
        refused.contains("another instance (a)"),
        "the holder is named: {refused}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_never_take_the_same_domain_and_take_over_after_the_lease() {
    let schema = TestSchema::new().await;
    let a = Arc::new(schema.store_with_lease("a", 2).await);
    let b = Arc::new(schema.store_with_lease("b", 2).await);
    let c = Arc::new(schema.store_with_lease("c", 2).await);
    check_bridge_leases(a, b, c, Duration::from_secs(2)).await;
}

// ---------------------------------------------------------------------------------------
// ACME

async fn check_acme(a: Arc<S>, b: Arc<S>, c: Arc<S>, lease: Duration) {
    let keys: Vec<KeyHash> = (0..6).map(|_| key()).collect();
    a.touch_acme_key(&keys[0], 100).await.unwrap();
    assert_eq!(a.acme_key(&keys[0]).await.unwrap(), None, "ACME is off");
    a.enable_acme();
    b.enable_acme();
    for (i, k) in keys.iter().enumerate() {
        a.touch_acme_key(k, 100 + i as i64).await.unwrap();
    }
    assert_eq!(a.next_acme_due().await.unwrap(), Some(100));
    let (ta, tb) = tokio::join!(a.due_acme_keys(200, 4), b.due_acme_keys(200, 4));
    let (ja, jb) = (ta.unwrap(), tb.unwrap());
    let sa: HashSet<_> = ja.iter().map(|k| k.0).collect();
    let sb: HashSet<_> = jb.iter().map(|k| k.0).collect();
    assert!(sa.is_disjoint(&sb));
    assert_eq!(sa.len() + sb.len(), 6);

    // The touch-while-working rule: a save behind a newer touch keeps the key due.
    let held = ja[0];
    let mut copy = a.acme_key(&held).await.unwrap().unwrap();
    a.touch_acme_key(&held, 150).await.unwrap();
    copy.account_id = Some(24_282);
    copy.next_attempt_at = Some(100 + 86_400);
    a.save_acme_key(&held, &copy, 160).await.unwrap();
    let saved = a.acme_key(&held).await.unwrap().unwrap();
    assert_eq!(saved.account_id, Some(24_282));
    assert_eq!(saved.next_attempt_at, Some(160));
    // Without a touch in between, the worker's schedule holds and the lease goes.
    let mut later = saved.clone();
    later.next_attempt_at = Some(500);
    a.save_acme_key(&held, &later, 170).await.unwrap();
    assert!(!b.due_acme_keys(499, 10).await.unwrap().contains(&held));
    assert!(b.due_acme_keys(500, 10).await.unwrap().contains(&held));

    // b dies holding its keys; a takes them after the lease; b's late save is refused.
    let theirs = jb[0];
    let record = a.acme_key(&theirs).await.unwrap().unwrap();
    b.close().await.unwrap();
    tokio::time::sleep(lease + Duration::from_millis(500)).await;
    let taken = a.due_acme_keys(1_000, 100).await.unwrap();
    assert!(taken.contains(&theirs));
    let refused = c
        .save_acme_key(&theirs, &record, 1_000)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("another instance"), "{refused}");
    let mut done = AcmeKeyRecord {
        next_attempt_at: None,
        ..record
    };
    done.account_deleted = true;
    a.save_acme_key(&theirs, &done, 1_000).await.unwrap();
    assert!(
        !c.due_acme_keys(i64::MAX, 100)
            .await
            .unwrap()
            .contains(&theirs)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_acme_outbox_is_leased_like_the_bridges() {
    let schema = TestSchema::new().await;
    let a = Arc::new(schema.store_with_lease("a", 2).await);
    let b = Arc::new(schema.store_with_lease("b", 2).await);
    let c = Arc::new(schema.store_with_lease("c", 2).await);
    c.enable_acme();
    check_acme(a, b, c, Duration::from_secs(2)).await;
}

async fn check_acme_touches(s: &S) {
    s.enable_acme();
    let from = ip("192.0.2.1");
    let (busy, idle, revoked) = (key(), key(), key());
    for k in [&busy, &idle, &revoked] {
        new_key(s, k).await;
    }
    s.add_domain(&busy, &domain("a.x.org"), from, 10)
        .await
        .unwrap();
    let record = s.acme_key(&busy).await.unwrap().unwrap();
    assert_eq!((record.touches, record.next_attempt_at), (1, Some(10)));
    s.remove_domain(&busy, &domain("a.x.org"), from, 11)
        .await
        .unwrap();
    s.add_domain(&busy, &domain("b.x.org"), from, 12)
        .await
        .unwrap();
    assert_eq!(s.acme_key(&busy).await.unwrap().unwrap().touches, 3);
    s.revoke_key(&revoked, from, 13).await.unwrap();
    assert_eq!(s.acme_key(&revoked).await.unwrap().unwrap().touches, 1);
    assert_eq!(s.acme_key(&idle).await.unwrap(), None);
    // The backfill: keys with domains or an ACME record, not the idle one.
    assert_eq!(s.backfill_acme(20).await.unwrap(), 2);
    assert_eq!(s.acme_key(&idle).await.unwrap(), None);
    assert_eq!(s.acme_key(&busy).await.unwrap().unwrap().touches, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn registrations_and_revocations_touch_the_acme_key_in_their_transaction() {
    let schema = TestSchema::new().await;
    let s = schema.store("a").await;
    check_acme_touches(&s).await;
}

// ---------------------------------------------------------------------------------------
// Operator

async fn check_operator(s: &S) {
    let from = ip("192.0.2.1");
    assert_eq!(
        s.requeue_domain("www.x.org", from, 1).await.unwrap(),
        RequeueOutcome::BridgeOff
    );
    let mut hashes: Vec<KeyHash> = (0..7).map(|_| key()).collect();
    for h in &hashes {
        new_key(s, h).await;
    }
    hashes.sort_by_key(|h| h.0);
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = s.keys_after(after.as_ref(), 3).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = Some(page.last().unwrap().0);
        paged.extend(page.into_iter().map(|(h, _)| h));
    }
    assert_eq!(paged, hashes);
    let id = hashes[3].id();
    for len in [1, 2, 5, 12] {
        let found = s
            .keys_with_id_prefix(&id[..len].to_uppercase())
            .await
            .unwrap();
        assert!(found.iter().any(|(h, _)| *h == hashes[3]), "prefix {len}");
        assert!(found.iter().all(|(h, _)| h.id().starts_with(&id[..len])));
    }
    assert!(s.keys_with_id_prefix("zz").await.unwrap().is_empty());

    // Registered while the bridge was off.
    s.add_domain(&hashes[0], &domain("www.x.org:8443"), from, 2)
        .await
        .unwrap();
    s.add_domain(&hashes[1], &domain("www.x.org:8443"), from, 3)
        .await
        .unwrap();
    s.add_domain(&hashes[1], &domain("a.x.org"), from, 4)
        .await
        .unwrap();
    s.confirm_key(&hashes[1], from, 5).await.unwrap();
    s.enable_bridge();
    assert_eq!(
        s.requeue_domain("nobody.x.org", from, 6).await.unwrap(),
        RequeueOutcome::UnknownDomain
    );
    assert_eq!(
        s.requeue_domain("www.x.org", from, 6).await.unwrap(),
        RequeueOutcome::Requeued,
        "registered with a port only"
    );
    let mut failed = s.bridge("www.x.org").await.unwrap().unwrap();
    failed.phase = BridgePhase::Failed;
    failed.next_attempt_at = None;
    failed.attempts = 3;
    failed.sectigo_id = Some(77);
    s.save_bridge("www.x.org", &failed).await.unwrap();
    assert_eq!(
        s.requeue_domain("www.x.org", from, 7).await.unwrap(),
        RequeueOutcome::Requeued
    );
    let requeued = s.bridge("www.x.org").await.unwrap().unwrap();
    assert_eq!(requeued.phase, BridgePhase::Queued);
    assert_eq!((requeued.attempts, requeued.next_attempt_at), (0, Some(7)));
    assert_eq!(requeued.sectigo_id, Some(77), "what was known is kept");
    let last = s.audit_events(None, 1000).await.unwrap().pop().unwrap().1;
    assert_eq!(
        last.kind,
        AuditKind::DomainRequeued {
            domain: "www.x.org".into()
        }
    );
    assert_eq!(last.key_id, KeyHash([0; 32]).id());

    // The inventory, a page at a time.
    let first = s.inventory_after(None, 1).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].domain, "a.x.org");
    assert_eq!(first[0].registered_at, 4);
    assert!(first[0].bridge.is_none(), "never queued");
    assert_eq!(first[0].holders.len(), 1);
    assert!(first[0].holders[0].confirmed);
    let rest = s.inventory_after(Some("a.x.org"), 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    let row = &rest[0];
    assert_eq!(row.domain, "www.x.org:8443");
    assert_eq!(row.bridge.as_ref().unwrap().sectigo_id, Some(77));
    let mut ids: Vec<_> = [hashes[0].id(), hashes[1].id()].into();
    ids.sort();
    assert_eq!(
        row.holders
            .iter()
            .map(|h| h.key_id.clone())
            .collect::<Vec<_>>(),
        ids
    );
    assert!(
        s.inventory_after(Some("www.x.org:8443"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let counts = s.bridge_phase_counts().await.unwrap();
    assert_eq!(counts.get(&BridgePhase::Queued), Some(&1));
    assert_eq!(counts.values().sum::<u64>(), 1);
    s.probe_write(8).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_pages_keys_and_the_inventory_and_requeues_domains() {
    let schema = TestSchema::new().await;
    let s = schema.store("a").await;
    check_operator(&s).await;
}

// ---------------------------------------------------------------------------------------
// Lifecycle and migrations

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_store_refuses_and_an_open_one_needs_no_commit_wait() {
    let schema = TestSchema::new().await;
    let s = schema.store("a").await;
    s.writable().unwrap();
    assert!(s.group_commit().is_none());
    let hash = key();
    let mark = s.mark();
    new_key(&s, &hash).await;
    s.commit_since(mark).await.unwrap();
    s.commit().await.unwrap();
    s.flush().await.unwrap();
    assert!(!s.fatal().is_cancelled());
    s.close().await.unwrap();
    assert!(s.writable().is_err());
    assert!(s.commit().await.is_err());
    assert!(s.key(&hash).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_starting_together_migrate_once() {
    let schema = TestSchema::new().await;
    let configs: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| schema.config(n, 300))
        .collect();
    let started = futures_util::future::join_all(configs.iter().map(Store::open_postgres)).await;
    for store in &started {
        assert!(
            store.is_ok(),
            "{:?}",
            store.as_ref().err().map(|e| e.to_string())
        );
    }
    let client = schema.client().await;
    let rows = client
        .query(
            "SELECT version, count(*) FROM schema_migrations GROUP BY version",
            &[],
        )
        .await
        .unwrap();
    assert!(!rows.is_empty());
    for row in rows {
        assert_eq!(
            row.get::<_, i64>(1),
            1,
            "migration {} applied once",
            row.get::<_, i32>(0)
        );
    }
    // A newer certline migrated the schema: this one refuses to start.
    client
        .execute(
            "INSERT INTO schema_migrations (version, name) VALUES (9999, 'from the future')",
            &[],
        )
        .await
        .unwrap();
    let refused = match Store::open_postgres(&schema.config("d", 300)).await {
        Ok(_) => panic!("started on a newer schema"),
        Err(e) => e.to_string(),
    };
    assert!(
        refused.contains("9999") && refused.contains("newer"),
        "{refused}"
    );
}

/// Waits up to `limit` for `store`'s count of live instances to be `want`.
async fn wait_for_live(store: &S, want: usize, limit: Duration, what: &str) {
    let mut live = store.live_instances();
    let reached = tokio::time::timeout(limit, live.wait_for(|n| *n == want)).await;
    assert!(
        matches!(reached, Ok(Ok(_))),
        "{what}: still {} live instances after {limit:?}, expected {want}",
        *store.live_instances().borrow()
    );
}

/// Instances count each other from their heartbeats (the database's clock): both live → 2;
/// one that stops beating without a clean shutdown (as a killed process) counts until its
/// heartbeat is older than the window, then no more; a clean close leaves at once; a row
/// older than the window never counts.
#[tokio::test(flavor = "multi_thread")]
async fn live_instances_follow_the_heartbeats() {
    let schema = TestSchema::new().await;
    let fast = |name: &str| {
        let mut config = schema.config(name, 300);
        config.heartbeat_ms = 200;
        config
    };
    let a = Store::open_postgres(&fast("a")).await.unwrap();
    assert_eq!(*a.live_instances().borrow(), 1, "alone at first");
    let b = Store::open_postgres(&fast("b")).await.unwrap();
    assert_eq!(*b.live_instances().borrow(), 2, "b counts a at its start");
    wait_for_live(&a, 2, Duration::from_secs(10), "a sees b").await;

    // A row that was last seen long ago (a host whose clock is off writes none: the
    // database's clock stamps every row) is not live.
    let client = schema.client().await;
    client
        .execute(
            "INSERT INTO instances (name, last_seen) VALUES ('ghost', now() - interval '1 hour')",
            &[],
        )
        .await
        .unwrap();

    // b dies without a clean shutdown: its row stays, its heartbeat stops.
    drop(b);
    wait_for_live(&a, 1, Duration::from_secs(10), "b's heartbeat aged out").await;
    let rows: Vec<String> = client
        .query("SELECT name FROM instances ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        rows,
        ["a", "b", "ghost"],
        "b's row was not deleted: the window alone made it not live"
    );

    // c starts and shuts down cleanly: its row goes at once, a's count follows.
    let c = Store::open_postgres(&fast("c")).await.unwrap();
    wait_for_live(&a, 2, Duration::from_secs(10), "a sees c").await;
    c.close().await.unwrap();
    let c_rows: i64 = client
        .query_one("SELECT count(*) FROM instances WHERE name = 'c'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(c_rows, 0, "a clean close deletes the instance's row");
    wait_for_live(&a, 1, Duration::from_secs(10), "c left").await;
    a.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_server_is_named_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("url");
    std::fs::write(&path, "postgres://certline:pw-secret@127.0.0.1:1/test").unwrap();
    let mut config = PostgresConfig::from_url_file(&path);
    config.schema = "t_unreachable".into();
    let err = match Store::open_postgres(&config).await {
        Ok(_) => panic!("connected to port 1"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(!err.contains("pw-secret"), "{err}");
}

/// The store's futures can be spawned (callers run them on tokio tasks).
#[tokio::test(flavor = "multi_thread")]
async fn the_store_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let schema = TestSchema::new().await;
    let s = Arc::new(schema.store("a").await);
    let hash = key();
    let caps = ClaimCaps::default();
    let d = domain("a.x.org");
    send(&s.add_domain(&hash, &d, ip("192.0.2.1"), 0));
    send(&s.claim_key(&hash, true, "a@x.org", &caps, ip("192.0.2.1"), 0));
    send(&s.due_bridge_jobs(0, 1));
    send(&s.inventory_after(None, 1));
    let spawned = tokio::spawn({
        let s = s.clone();
        async move { s.create_key(&hash, None, &caps, ip("192.0.2.1"), 0).await }
    });
    assert_eq!(spawned.await.unwrap().unwrap(), ClaimOutcome::Claimed);
}

/// A TCP relay to the test server that can be cut (every connection dropped, new ones
/// refused) and restored: the server becoming unreachable, as a network failure would.
struct Relay {
    addr: std::net::SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
}

impl Relay {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let cut = cut2.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(SERVER).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        Self { addr, up, cut }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
        if !up {
            for _ in 0..256 {
                self.cut.notify_waiters();
            }
        }
    }
}

/// The server goes away: the failed write says so, `writable` names the server and what
/// to do; the server comes back: the probe finds it within seconds, writes work again.
#[tokio::test(flavor = "multi_thread")]
async fn writable_follows_the_server_going_away_and_coming_back() {
    let schema = TestSchema::new().await;
    let relay = Relay::start().await;
    let relayed = format!("postgres://postgres@{}/test", relay.addr);
    std::fs::write(schema.dir.path().join("relayed"), &relayed).unwrap();
    let mut config = schema.config("a", 300);
    config.url_file = Some(schema.dir.path().join("relayed"));
    config.statement_timeout_ms = 1000;
    let s = Store::open_postgres(&config).await.unwrap();
    let hash = key();
    new_key(&s, &hash).await;
    s.writable().unwrap();

    relay.set_up(false);
    let failed = s
        .add_domain(&hash, &domain("a.x.org"), ip("192.0.2.1"), 1)
        .await;
    assert!(failed.is_err(), "a write through a cut connection failed");
    let reason = s.writable().unwrap_err().to_string();
    assert!(reason.contains(&relay.addr.to_string()), "{reason}");
    assert!(reason.contains("retries every second"), "{reason}");
    assert!(!s.fatal().is_cancelled(), "an outage is not fatal");

    relay.set_up(true);
    let started = std::time::Instant::now();
    while s.writable().is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "never writable again: {}",
            s.writable().unwrap_err()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        s.add_domain(&hash, &domain("a.x.org"), ip("192.0.2.1"), 2)
            .await
            .unwrap(),
        AddOutcome::Added,
        "the failed write was not stored"
    );
    assert_eq!(s.key(&hash).await.unwrap().unwrap().domain_count, 1);
    s.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// The same contract on the embedded backend (sled)

/// An embedded store in a temporary directory, in durable mode (the default), with the
/// default timings: what `certline serve` opens without a `[store]` section.
fn sled_store() -> (tempfile::TempDir, S) {
    let dir = tempfile::tempdir().unwrap();
    let timing = Timing {
        relaxed_flush: Duration::from_millis(1000),
        checkpoint: Duration::from_secs(30),
    };
    let store = Store::open(dir.path(), DurabilityMode::Durable, timing)
        .unwrap_or_else(|e| panic!("opening a sled store in {}: {e}", dir.path().display()));
    assert_eq!(store.backend_name(), "sled");
    (dir, store)
}

#[tokio::test(flavor = "multi_thread")]
async fn sled_claims_have_every_outcome_and_are_audited_once() {
    let (_dir, s) = sled_store();
    check_claim_outcomes(&s).await;
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sled_claim_caps_refuse_the_claim_over_the_limit_and_only_that() {
    let (_dir, s) = sled_store();
    check_caps(&s).await;
}

/// One process's concurrent callers race for the caps (sled serves one process).
#[tokio::test(flavor = "multi_thread")]
async fn sled_claim_caps_hold_when_callers_race() {
    let (_dir, s) = sled_store();
    let s = Arc::new(s);
    check_caps_under_a_race(s.clone(), s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sled_add_and_remove_are_idempotent_and_keep_the_domain_count() {
    let (_dir, s) = sled_store();
    let s = Arc::new(s);
    check_add_remove(s.clone(), s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sled_key_domains_page_in_byte_order_by_offset() {
    let (_dir, s) = sled_store();
    check_key_domain_pages(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sled_holders_of_lists_the_keys_holding_a_domain_in_hash_order() {
    let (_dir, s) = sled_store();
    check_holders(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sled_audit_events_are_oldest_first_paged_and_only_for_committed_changes() {
    let (_dir, s) = sled_store();
    check_audit(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sled_links_work_once_confirm_or_revoke_and_release_waiting_domains() {
    let (_dir, s) = sled_store();
    check_links(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sled_a_confirmation_is_not_undone_by_a_worker_saving_an_older_copy() {
    let (_dir, s) = sled_store();
    check_confirmed_wins_over_a_stale_save(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sled_registrations_and_revocations_touch_the_acme_key_in_their_transaction() {
    let (_dir, s) = sled_store();
    check_acme_touches(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sled_the_operator_pages_keys_and_the_inventory_and_requeues_domains() {
    let (_dir, s) = sled_store();
    check_operator(&s).await;
}
