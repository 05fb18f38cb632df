//! The Sectigo client against the SCM simulator, over real loopback sockets, plus every
//! example response from the API reference parsed with the client's types.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certline::bridge::SectigoConfig;
use certline::bridge::sectigo::{
    ApiErrorBody, ClientOptions, CnameChallenge, CreateDomainRequest, CreateOutcome, Credentials,
    CtLogMonitoring, DcvListEntry, DcvMode, DcvStatus, DcvSubmitResult, DelegationStatus,
    DomainInfo, DomainRef, DomainState, NewDelegation, OrderStatus, SectigoClient, SectigoError,
    TransientKind, TxtSubmitResult, ValidationStatus,
};
use certline::config::Secret;
use chrono::{NaiveDate, Utc};
use support::scm_sim::{self, Malform, ScmSim};
use url::Url;

fn options(sim: &ScmSim, credentials: Credentials) -> ClientOptions {
    let mut o = ClientOptions::new(Url::parse(&sim.api_url()).unwrap(), credentials);
    o.request_timeout = Duration::from_secs(10);
    o.connect_timeout = Duration::from_secs(5);
    o.max_concurrency = 4;
    // High enough that the limiter never shapes a test.
    o.max_requests_per_second = 10_000.0;
    // The simulator speaks plain HTTP (one test below runs it over TLS).
    o.allow_insecure_http = true;
    o
}

fn header_credentials() -> Credentials {
    Credentials::Headers {
        login: scm_sim::LOGIN.into(),
        password: Secret::new(scm_sim::PASSWORD),
        customer_uri: scm_sim::CUSTOMER_URI.into(),
    }
}

fn oauth_credentials(sim: &ScmSim) -> Credentials {
    Credentials::OAuth2 {
        token_url: Url::parse(&sim.token_url()).unwrap(),
        client_id: scm_sim::CLIENT_ID.into(),
        client_secret: Secret::new(scm_sim::CLIENT_SECRET),
    }
}

fn header_client(sim: &ScmSim) -> SectigoClient {
    SectigoClient::new(options(sim, header_credentials())).unwrap()
}

fn oauth_client(sim: &ScmSim) -> SectigoClient {
    SectigoClient::new(options(sim, oauth_credentials(sim))).unwrap()
}

fn create_request(name: &str) -> CreateDomainRequest {
    CreateDomainRequest {
        name: name.into(),
        description: Some("test".into()),
        active: Some(true),
        ct_log_monitoring: None,
        delegations: vec![NewDelegation {
            org_id: 2622,
            cert_types: vec!["SSL".into()],
            domain_certificate_request_privileges: vec!["DOMAIN".into(), "SUBDOMAIN".into()],
        }],
    }
}

const LIST: &str = "GET /api/domain/v1";

// ---------------------------------------------------------------------------------------------
// Domains

#[tokio::test]
async fn name_lookup_reads_every_page_and_keeps_only_exact_matches() {
    let sim = ScmSim::start().await;
    let apex = sim.add_domain("example.edu");
    for i in 0..450 {
        sim.add_domain(&format!("host{i}.example.edu"));
    }
    let client = header_client(&sim);

    // "example.edu" is a substring of all 451 names: pages of 200, 200, 51.
    let found = client.find_domains_by_name("Example.EDU.").await.unwrap();
    assert_eq!(
        found,
        vec![DomainRef {
            id: apex,
            name: "example.edu".into()
        }]
    );
    assert_eq!(sim.count(LIST), 3);

    // "host7.example.edu" is also inside host17, host27, ..., host447.
    let found = client
        .find_domain("host7.example.edu")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.name, "host7.example.edu");
    assert_eq!(
        client
            .find_domains_by_name("host7.example.edu")
            .await
            .unwrap()
            .len(),
        1
    );

    assert_eq!(
        client.find_domain("absent.example.edu").await.unwrap(),
        None
    );
}

#[tokio::test]
async fn paging_stops_at_x_total_count_without_an_extra_empty_page() {
    let sim = ScmSim::start().await;
    for i in 0..400 {
        sim.add_domain(&format!("h{i}.example.org"));
    }
    let client = header_client(&sim);
    assert!(
        client
            .find_domains_by_name("example.org")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(sim.count(LIST), 2, "400 rows are exactly two full pages");

    let page = client.list_domains_page(None, 390, 200).await.unwrap();
    assert_eq!(page.items.len(), 10);
    assert_eq!(page.total, Some(400));
}

#[tokio::test]
async fn create_returns_the_id_from_location_and_already_exists_is_an_outcome() {
    let sim = ScmSim::start().await;
    let client = header_client(&sim);
    let outcome = client
        .create_domain(&create_request("new.example.edu"))
        .await
        .unwrap();
    let id = sim.domain_id("new.example.edu").unwrap();
    assert_eq!(outcome, CreateOutcome::Created { id });

    let again = client
        .create_domain(&create_request("new.example.edu"))
        .await
        .unwrap();
    assert_eq!(again, CreateOutcome::AlreadyExists);
    assert_eq!(sim.created("new.example.edu"), 1);

    let info = client.domain_info(id).await.unwrap();
    assert_eq!(info.name, "new.example.edu");
    assert_eq!(info.state, Some(DomainState::Active));
    assert_eq!(info.delegations[0].org_id, 2622);
    assert_eq!(
        info.delegations[0].domain_certificate_request_privileges,
        vec!["DOMAIN", "SUBDOMAIN"]
    );
    assert_eq!(info.validation_status, Some(ValidationStatus::NotValidated));
}

#[tokio::test]
async fn create_lost_answer_then_retry_creates_exactly_once() {
    let sim = ScmSim::start().await;
    let client = header_client(&sim);
    sim.reset_after_next(1);
    let err = client
        .create_domain(&create_request("lost.example.edu"))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let retry = client
        .create_domain(&create_request("lost.example.edu"))
        .await
        .unwrap();
    assert_eq!(retry, CreateOutcome::AlreadyExists);
    assert_eq!(sim.created("lost.example.edu"), 1);
    assert!(
        client
            .find_domain("lost.example.edu")
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn create_rejections_carry_sectigo_code_and_description() {
    let sim = ScmSim::start().await;
    let client = header_client(&sim);

    let err = client
        .create_domain(&create_request("bad_name!.example.edu"))
        .await
        .unwrap_err();
    match &err {
        SectigoError::Api {
            status,
            code,
            description,
        } => {
            assert_eq!((*status, *code), (400, Some(-732)));
            assert_eq!(description, "Invalid domain name.");
        }
        other => panic!("expected Api, got {other:?}"),
    }
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains("-732") && text.contains("Invalid domain name."),
        "{text}"
    );

    let mut no_delegation = create_request("nodeleg.example.edu");
    no_delegation.delegations.clear();
    let err = client.create_domain(&no_delegation).await.unwrap_err();
    assert_eq!(err.code(), Some(-709));
    assert_eq!(sim.created("nodeleg.example.edu"), 0);
}

#[tokio::test]
async fn unknown_id_is_404_with_the_error_body() {
    let sim = ScmSim::start().await;
    let err = header_client(&sim).domain_info(999_999).await.unwrap_err();
    assert!(
        matches!(&err, SectigoError::Api { status: 404, code: Some(_), description } if !description.is_empty()),
        "{err:?}"
    );
}

#[tokio::test]
async fn ct_monitoring_put_has_an_empty_answer_and_needs_a_bucket() {
    let sim = ScmSim::start().await;
    let id = sim.add_domain("mon.example.edu");
    let client = header_client(&sim);
    client
        .set_ct_monitoring(
            id,
            &CtLogMonitoring {
                enabled: true,
                include_subdomains: true,
                bucket_id: Some("6d505c9c-b66b-44f9-8ba4-3aaf4d69aed6".into()),
            },
        )
        .await
        .unwrap();
    let info = client.domain_info(id).await.unwrap();
    let ct = info.ct_log_monitoring.unwrap();
    assert!(ct.enabled && ct.include_subdomains);
    assert_eq!(
        ct.bucket_id.as_deref(),
        Some("6d505c9c-b66b-44f9-8ba4-3aaf4d69aed6")
    );

    let err = client
        .set_ct_monitoring(
            id,
            &CtLogMonitoring {
                enabled: true,
                include_subdomains: false,
                bucket_id: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(-7));
}

#[tokio::test]
async fn details_without_dcv_fields_still_parse() {
    let sim = ScmSim::start().await;
    let id = sim.add_domain("nodcv.example.edu");
    sim.set_dcv_enabled(false);
    let info = header_client(&sim).domain_info(id).await.unwrap();
    assert_eq!(info.validation_status, None);
    assert_eq!(info.dcv_expiration, None);
}

// ---------------------------------------------------------------------------------------------
// DCV

async fn wait_validated(client: &SectigoClient, domain: &str) -> DcvStatus {
    // A liveness bound, not a speed check: the simulator checks every 20 ms.
    for _ in 0..250 {
        let s = client.dcv_status(domain).await.unwrap();
        if s.status == Some(ValidationStatus::Validated) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{domain} never validated");
}

#[tokio::test]
async fn cname_dcv_goes_submitted_then_validated_once_the_record_is_published() {
    let sim = ScmSim::start().await;
    sim.add_domain("cname-dcv.edu");
    let client = header_client(&sim);

    let before = client.dcv_status("cname-dcv.edu").await.unwrap();
    assert_eq!(before.status, Some(ValidationStatus::NotValidated));
    assert_eq!(before.order_status, Some(OrderStatus::NotInitiated));

    let challenge = client.start_cname("cname-dcv.edu").await.unwrap();
    assert!(challenge.host.starts_with('_'));
    assert!(challenge.host.ends_with(".cname-dcv.edu."));
    assert!(challenge.point.ends_with(".sectigo.com."));
    assert_eq!(
        sim.count("POST /api/dcv/v1/validation/start/domain/cname"),
        1
    );

    let submitted = client.submit_cname("cname-dcv.edu").await.unwrap();
    assert_eq!(submitted.order_status, Some(OrderStatus::Submitted));

    sim.check_dcv_now();
    let pending = client.dcv_status("cname-dcv.edu").await.unwrap();
    assert_eq!(pending.status, Some(ValidationStatus::NotValidated));
    assert_eq!(pending.order_status, Some(OrderStatus::Submitted));
    assert_eq!(pending.order_mode, Some(DcvMode::Cname));
    assert!(pending.last_check.is_some() && pending.next_check.is_some());

    sim.publish_dns(
        challenge.host.trim_end_matches('.'),
        challenge.point.trim_end_matches('.'),
    );
    // SCM checks at its announced nextCheck (2 h by default), not as soon as DNS changes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let early = client.dcv_status("cname-dcv.edu").await.unwrap();
    assert_eq!(early.status, Some(ValidationStatus::NotValidated));
    assert!(early.next_check.unwrap() > Utc::now() + chrono::Duration::minutes(60));
    sim.check_dcv_now();
    let done = wait_validated(&client, "cname-dcv.edu").await;
    assert!(done.expiration_date.unwrap() > done.validation_date.unwrap());

    let page = client.list_dcv_page(0, 200).await.unwrap();
    assert_eq!(page.total, Some(1));
    assert_eq!(page.items[0].dcv_status, Some(ValidationStatus::Validated));
}

#[tokio::test]
async fn txt_dcv_value_survives_backslash_and_backtick() {
    let sim = ScmSim::start().await;
    sim.add_domain("txt-dcv.edu");
    sim.set_next_check_interval(Duration::from_millis(50));
    let client = oauth_client(&sim);
    let r = client.submit_txt("txt-dcv.edu").await.unwrap();
    assert_eq!(
        sim.count("POST /api/dcv/v2/validation/submit/domain/txt"),
        1
    );
    assert_eq!(r.host, "_pki-validation.txt-dcv.edu.");
    assert!(
        r.point.contains('\\') && r.point.contains('`'),
        "{}",
        r.point
    );
    sim.publish_dns(&r.host, &r.point);
    wait_validated(&client, "txt-dcv.edu").await;
}

#[tokio::test]
async fn dcv_on_a_domain_scm_lacks_is_recognisable() {
    let sim = ScmSim::start().await;
    let client = header_client(&sim);
    let err = client.start_cname("missing.example.edu").await.unwrap_err();
    assert!(err.is_unknown_domain(), "{err:?}");
    let err = client.dcv_status("missing.example.edu").await.unwrap_err();
    assert_eq!(err.code(), Some(-727));
}

// ---------------------------------------------------------------------------------------------
// Faults

fn assert_transient(err: &SectigoError, kind: TransientKind) {
    assert!(
        matches!(err, SectigoError::Transient { kind: k, .. } if *k == kind),
        "expected {kind:?}, got {err:?}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn server_errors_resets_and_429_are_transient() {
    let sim = ScmSim::start().await;
    sim.add_domain("f.example.edu");
    let client = header_client(&sim);

    sim.fail_next(2, 503);
    for _ in 0..2 {
        let err = client.find_domain("f.example.edu").await.unwrap_err();
        assert_transient(&err, TransientKind::Server);
        assert!(matches!(
            err,
            SectigoError::Transient {
                status: Some(503),
                ..
            }
        ));
    }
    assert!(client.find_domain("f.example.edu").await.unwrap().is_some());

    sim.reset_next(1);
    let err = client.find_domain("f.example.edu").await.unwrap_err();
    assert_transient(&err, TransientKind::Network);
    assert!(client.find_domain("f.example.edu").await.unwrap().is_some());

    sim.throttle_next(1, 7);
    let err = client.find_domain("f.example.edu").await.unwrap_err();
    assert_transient(&err, TransientKind::RateLimited);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn malformed_success_bodies_are_retryable_decode_errors() {
    let sim = ScmSim::start().await;
    let id = sim.add_domain("m.example.edu");
    let client = header_client(&sim);

    sim.malform_next(1, Malform::Truncated);
    let err = client.find_domain("m.example.edu").await.unwrap_err();
    assert!(matches!(err, SectigoError::Decode { .. }), "{err:?}");
    assert!(err.is_retryable());

    sim.malform_next(1, Malform::Garbage);
    let err = client.domain_info(id).await.unwrap_err();
    assert!(matches!(err, SectigoError::Decode { .. }), "{err:?}");

    assert_eq!(client.domain_info(id).await.unwrap().id, id);
}

#[tokio::test]
async fn timeouts_and_refused_connections_are_transient() {
    let sim = ScmSim::start().await;
    let mut o = options(&sim, header_credentials());
    o.request_timeout = Duration::from_millis(200);
    let client = SectigoClient::new(o).unwrap();
    sim.set_latency(Duration::from_secs(2));
    let err = client.find_domain("t.example.edu").await.unwrap_err();
    assert_transient(&err, TransientKind::Timeout);

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let mut o = options(&sim, header_credentials());
    o.base_url = Url::parse(&format!("http://{addr}/api")).unwrap();
    let err = SectigoClient::new(o)
        .unwrap()
        .find_domain("t.example.edu")
        .await
        .unwrap_err();
    assert_transient(&err, TransientKind::Connect);
}

#[tokio::test]
async fn bad_credentials_are_unauthorized_with_sectigo_code() {
    let sim = ScmSim::start().await;
    let client = header_client(&sim);
    sim.set_header_credentials(scm_sim::LOGIN, "rotated-password", scm_sim::CUSTOMER_URI);
    let err = client.find_domain("a.example.edu").await.unwrap_err();
    match &err {
        SectigoError::Unauthorized { code, description } => {
            assert_eq!(*code, Some(-16));
            assert_eq!(description.as_deref(), Some("Unknown user"));
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert!(!err.is_retryable());

    sim.set_header_credentials(scm_sim::LOGIN, scm_sim::PASSWORD, scm_sim::CUSTOMER_URI);
    sim.set_unauthorized(true);
    assert!(matches!(
        client.find_domain("a.example.edu").await,
        Err(SectigoError::Unauthorized { .. })
    ));
    sim.set_unauthorized(false);
    assert!(client.find_domain("a.example.edu").await.is_ok());
}

#[tokio::test]
async fn random_transient_failures_are_all_retryable_and_retries_get_through() {
    let sim = ScmSim::start().await;
    sim.add_domain("r.example.edu");
    let client = header_client(&sim);
    sim.set_random_failure_rate(0.3, 42);
    let mut failures = 0;
    for _ in 0..40 {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match client.find_domain("r.example.edu").await {
                Ok(found) => {
                    assert!(found.is_some());
                    break;
                }
                Err(e) => {
                    assert!(e.is_retryable(), "{e:?}");
                    failures += 1;
                    assert!(attempts < 30, "never got through");
                }
            }
        }
    }
    assert!(failures > 0, "the fault rate injected nothing");
}

// ---------------------------------------------------------------------------------------------
// OAuth2

#[tokio::test]
async fn oauth_token_is_cached() {
    let sim = ScmSim::start().await;
    sim.add_domain("o.example.edu");
    let client = oauth_client(&sim);
    for _ in 0..5 {
        assert!(client.find_domain("o.example.edu").await.unwrap().is_some());
    }
    assert_eq!(sim.token_requests(), 1);
    assert_eq!(sim.count(LIST), 5);
}

#[tokio::test]
async fn oauth_token_is_refreshed_before_it_expires() {
    let sim = ScmSim::start().await;
    sim.set_token_lifetime(Duration::from_secs(1));
    let client = oauth_client(&sim);
    client.find_domain("o.example.edu").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client.find_domain("o.example.edu").await.unwrap();
    assert_eq!(sim.token_requests(), 2);
    // Refreshed ahead of use: no request was spent on a 401.
    assert_eq!(sim.count(LIST), 2);
}

#[tokio::test]
async fn oauth_401_refreshes_once_and_retries_once() {
    let sim = ScmSim::start().await;
    let client = oauth_client(&sim);
    client.find_domain("o.example.edu").await.unwrap();
    sim.revoke_tokens();
    client.find_domain("o.example.edu").await.unwrap();
    assert_eq!(sim.token_requests(), 2);
    assert_eq!(sim.count(LIST), 3);

    // A revoked token and a revoked API key: one retry, then a clear Unauthorized.
    sim.revoke_tokens();
    sim.set_oauth_client(scm_sim::CLIENT_ID, "rotated-secret");
    let err = client.find_domain("o.example.edu").await.unwrap_err();
    assert!(matches!(err, SectigoError::Unauthorized { .. }), "{err:?}");
    assert_eq!(sim.token_requests(), 3);
    assert_eq!(sim.count(LIST), 4);
}

#[tokio::test]
async fn oauth_persistent_401_is_not_retried_forever() {
    let sim = ScmSim::start().await;
    let client = oauth_client(&sim);
    client.find_domain("o.example.edu").await.unwrap();
    sim.set_unauthorized(true);
    let before = sim.total_requests();
    let err = client.find_domain("o.example.edu").await.unwrap_err();
    assert!(matches!(err, SectigoError::Unauthorized { .. }), "{err:?}");
    // The refused call and one token request; no retry without a new token.
    assert_eq!(sim.total_requests() - before, 2);
}

#[tokio::test]
async fn oauth_token_endpoint_outage_is_transient() {
    let sim = ScmSim::start().await;
    let client = oauth_client(&sim);
    sim.fail_next(1, 502);
    let err = client.find_domain("o.example.edu").await.unwrap_err();
    assert_transient(&err, TransientKind::Server);
    assert_eq!(sim.token_requests(), 1);
    assert_eq!(sim.count(LIST), 0);
    client.find_domain("o.example.edu").await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Secrets

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn secrets_never_appear_in_errors_debug_or_logs() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let sim = ScmSim::start().await;
    let id = sim.add_domain("s.example.edu");
    let headers = header_client(&sim);
    let oauth = oauth_client(&sim);
    let mut texts = vec![format!("{headers:?}"), format!("{oauth:?}")];
    texts.push(format!("{:?}", options(&sim, header_credentials())));
    texts.push(format!("{:?}", options(&sim, oauth_credentials(&sim))));
    let mut record = |r: Result<(), SectigoError>| {
        if let Err(e) = r {
            texts.push(e.to_string());
            texts.push(format!("{e:?}"));
        }
    };

    record(oauth.domain_info(id).await.map(drop));
    sim.revoke_tokens();
    record(oauth.domain_info(id).await.map(drop));
    sim.malform_next(1, Malform::Truncated);
    sim.revoke_tokens();
    record(oauth.domain_info(id).await.map(drop));
    sim.set_unauthorized(true);
    record(oauth.domain_info(id).await.map(drop));
    record(headers.domain_info(id).await.map(drop));
    sim.set_unauthorized(false);
    sim.fail_next(1, 500);
    record(headers.domain_info(id).await.map(drop));
    sim.reset_next(1);
    record(headers.domain_info(id).await.map(drop));
    sim.set_header_credentials("someone-else", "x", "y");
    record(headers.domain_info(id).await.map(drop));
    sim.set_oauth_client("other", "other");
    sim.revoke_tokens();
    record(oauth.domain_info(id).await.map(drop));

    assert!(
        texts.len() > 10,
        "the faults produced too few errors: {texts:#?}"
    );
    let log_text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        log_text.contains("sectigo"),
        "nothing was logged: {log_text}"
    );
    let mut secrets = vec![
        scm_sim::PASSWORD.to_string(),
        scm_sim::CLIENT_SECRET.to_string(),
    ];
    secrets.extend(sim.issued_tokens());
    assert!(secrets.len() >= 4, "expected several issued tokens");
    for secret in &secrets {
        // A partial token in a truncated body must not leak either.
        let probe = &secret[..secret.len().min(16)];
        for t in &texts {
            assert!(!t.contains(probe), "secret in error text: {t}");
        }
        assert!(!log_text.contains(probe), "secret in logs:\n{log_text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Documented example responses (verbatim from shared/reference/sectigo-scm-api.md)

fn date(y: i32, m: u32, d: u32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(y, m, d)
}

#[test]
fn example_domain_info_doc25_5() {
    let json = r#"{"id":409,"name":"ccmqa.com","delegationStatus":"ACTIVE","state":"ACTIVE","validationStatus":"VALIDATED","validationMethod":"EMAIL","dcvValidation":"2025-05-21","dcvExpiration":"2026-05-21","delegations":[{"orgId":2645,"certTypes":["SSL"],"domainCertificateRequestPrivileges":["DOMAIN"],"status":"ACTIVE"}],"ctLogMonitoring":{"bucketId":"6d505c9c-b66b-44f9-8ba4-3aaf4d69aed6","enabled":true,"includeSubdomains":true}}"#;
    let d: DomainInfo = serde_json::from_str(json).unwrap();
    assert_eq!((d.id, d.name.as_str()), (409, "ccmqa.com"));
    assert_eq!(d.delegation_status, Some(DelegationStatus::Active));
    assert_eq!(d.validation_status, Some(ValidationStatus::Validated));
    assert_eq!(d.validation_method.as_deref(), Some("EMAIL"));
    assert_eq!(d.dcv_validation, date(2025, 5, 21));
    assert_eq!(d.dcv_expiration, date(2026, 5, 21));
    assert_eq!(d.delegations[0].org_id, 2645);
    assert_eq!(
        d.delegations[0].domain_certificate_request_privileges,
        vec!["DOMAIN"]
    );
    let ct = d.ct_log_monitoring.unwrap();
    assert!(ct.enabled && ct.include_subdomains);
}

#[test]
fn example_domain_info_minimal_hmedu() {
    let json = r#"{"id":50,"name":"testdomain.com","delegationStatus":"ACTIVE","state":"ACTIVE","validationStatus":"VALIDATED","dcvExpiration":"2020-08-08","delegations":[{"orgId":2623,"certTypes":["SSL"],"status":"ACTIVE"}]}"#;
    let d: DomainInfo = serde_json::from_str(json).unwrap();
    assert_eq!(d.dcv_validation, None);
    assert_eq!(d.dcv_expiration, date(2020, 8, 8));
    assert!(
        d.delegations[0]
            .domain_certificate_request_privileges
            .is_empty()
    );
    assert_eq!(d.ct_log_monitoring, None);
}

#[test]
fn example_domain_list() {
    let json = r#"[{"id":400,"name":"example0.com"},{"id":401,"name":"example1.com"},{"id":402,"name":"example2.com"},{"id":403,"name":"example3.com"}]"#;
    let l: Vec<DomainRef> = serde_json::from_str(json).unwrap();
    assert_eq!(l.len(), 4);
    assert_eq!(
        l[3],
        DomainRef {
            id: 403,
            name: "example3.com".into()
        }
    );
    let wildcard = r#"[{"id":5,"name":"*.example.com"},{"id":556,"name":"example.com"}]"#;
    let l: Vec<DomainRef> = serde_json::from_str(wildcard).unwrap();
    assert_eq!(l[0].name, "*.example.com");
}

#[test]
fn example_dcv_list() {
    let json = r#"[ {"domain":"ccmqa.com","dcvStatus":"VALIDATED","dcvMethod":"EMAIL","dcvOrderStatus":"NOT_INITIATED","dcvOrderMethod":"EMAIL","expirationDate":"2025-05-22"},
    {"domain":"www.ccmqa.com","dcvStatus":"VALIDATED","dcvMethod":"EMAIL","dcvOrderStatus":"NOT_INITIATED","dcvOrderMethod":"EMAIL","expirationDate":"2025-05-22"} ]"#;
    let l: Vec<DcvListEntry> = serde_json::from_str(json).unwrap();
    assert_eq!(l[1].domain, "www.ccmqa.com");
    assert_eq!(l[1].dcv_order_status, Some(OrderStatus::NotInitiated));
    assert_eq!(l[1].dcv_order_method, Some(DcvMode::Email));
    assert_eq!(l[1].expiration_date, date(2025, 5, 22));

    let never = r#"[{"domain":"ccmqa.com","dcvStatus":"NOT_VALIDATED","dcvOrderStatus":"NOT_INITIATED","dcvMethod":null}]"#;
    let l: Vec<DcvListEntry> = serde_json::from_str(never).unwrap();
    assert_eq!(l[0].dcv_method, None);
    assert_eq!(l[0].dcv_status, Some(ValidationStatus::NotValidated));
}

#[test]
fn example_dcv_status_v2() {
    let json = r#"{"status":"EXPIRED","validationDate":"2024-05-21","expirationDate":"2025-05-11","orderStatus":"SUBMITTED","orderMode":"HTTP",
   "url":"http://example.com/.well-known/pki-validation/028A582FA40BC8F0B9BDE1590E71232B.txt",
   "firstLine":"8f2ff4dece5d62cdc3cc6950387952426eee9c2b15c33fb39d32e3ac329188d9","secondLine":"sectigo.com",
   "orderBackendId":"99887766","submittedDate":"2025-05-21","lastCheck":"2025-05-21T11:27:52.082Z","nextCheck":"2025-05-21T13:27:52.082Z"}"#;
    let s: DcvStatus = serde_json::from_str(json).unwrap();
    assert_eq!(s.status, Some(ValidationStatus::Expired));
    assert_eq!(s.order_status, Some(OrderStatus::Submitted));
    assert_eq!(s.order_mode, Some(DcvMode::Http));
    assert_eq!(s.expiration_date, date(2025, 5, 11));
    assert_eq!(s.submitted_date, date(2025, 5, 21));
    assert_eq!(s.second_line.as_deref(), Some("sectigo.com"));
    assert_eq!(s.order_backend_id.as_deref(), Some("99887766"));
    let gap = s.next_check.unwrap() - s.last_check.unwrap();
    assert_eq!(gap, chrono::Duration::hours(2));
}

#[test]
fn example_dcv_status_v1_minimal() {
    let json = r#"{"status":"VALIDATED","validationDate":"2024-05-22","expirationDate":"2025-05-22","orderStatus":"NOT_INITIATED"}"#;
    let s: DcvStatus = serde_json::from_str(json).unwrap();
    assert_eq!(s.status, Some(ValidationStatus::Validated));
    assert_eq!(s.validation_date, date(2024, 5, 22));
    assert_eq!(s.order_mode, None);
    assert_eq!(s.last_check, None);
}

#[test]
fn example_dcv_sync_and_clear() {
    let sync = r#"{"status":"NOT_VALIDATED","orderStatus":"SUBMITTED","orderMode":"EMAIL","emailValidationReferenceNumber":"1311135107","orderBackendId":"1234"}"#;
    let s: DcvStatus = serde_json::from_str(sync).unwrap();
    assert_eq!(
        s.email_validation_reference_number.as_deref(),
        Some("1311135107")
    );
    let clear = r#"{"status":"VALIDATED","orderStatus":"NOT_INITIATED","message":"DCV status: VALIDATED; DCV order status: NOT_INITIATED"}"#;
    let c: DcvSubmitResult = serde_json::from_str(clear).unwrap();
    assert_eq!(c.order_status, Some(OrderStatus::NotInitiated));
}

#[test]
fn example_start_cname() {
    let json = r#"{"host":"_09654698a2b286ee58f301cf83422f72.ccmqa.com.","point":"7a23d08ca322272cbf0fe1f5a5d2dccc.ad84dad968ad0ba5d41d78696fc89949.sectigo.com."}"#;
    let c: CnameChallenge = serde_json::from_str(json).unwrap();
    assert_eq!(c.host, "_09654698a2b286ee58f301cf83422f72.ccmqa.com.");
    assert_eq!(
        c.point,
        "7a23d08ca322272cbf0fe1f5a5d2dccc.ad84dad968ad0ba5d41d78696fc89949.sectigo.com."
    );
}

#[test]
fn example_submit() {
    let json = r#"{"status":"VALIDATED","orderStatus":"SUBMITTED","message":"Submitted successfully","orderBackendId":"100500"}"#;
    let s: DcvSubmitResult = serde_json::from_str(json).unwrap();
    assert_eq!(s.status, Some(ValidationStatus::Validated));
    assert_eq!(s.order_status, Some(OrderStatus::Submitted));
    assert_eq!(s.message.as_deref(), Some("Submitted successfully"));
    assert_eq!(s.order_backend_id.as_deref(), Some("100500"));
}

#[test]
fn example_submit_txt_with_backslash_and_backtick() {
    let json = r#"{"status":"VALIDATED","orderStatus":"SUBMITTED","message":"Submitted successfully","orderBackendId":"100500","host":"_pki-validation.ccmqa.com.","point":"F(U_t|L%>8]iU6Yx\\CFm;0O8DViEQ/|`"}"#;
    let t: TxtSubmitResult = serde_json::from_str(json).unwrap();
    assert_eq!(t.host, "_pki-validation.ccmqa.com.");
    assert_eq!(t.point, "F(U_t|L%>8]iU6Yx\\CFm;0O8DViEQ/|`");
    assert_eq!(t.point.chars().filter(|c| *c == '\\').count(), 1);
}

#[test]
fn example_error_bodies() {
    let e = ApiErrorBody::parse(br#"{"code":-16,"description":"Unknown user"}"#).unwrap();
    assert_eq!(
        (e.code, e.description.as_deref()),
        (Some(-16), Some("Unknown user"))
    );
    let e = ApiErrorBody::parse(
        br#"{"code":-3,"description":"You are not authorized to perform DCV validation."}"#,
    )
    .unwrap();
    assert_eq!(e.code, Some(-3));
    let e = ApiErrorBody::parse(
        br#"{ "code": -1001,  "description": "Value of 'organizationId' must not be null." }"#,
    )
    .unwrap();
    assert_eq!(e.code, Some(-1001));
    assert!(e.items.is_empty() && e.details.is_none());
    // The OpenAPI ErrorResponse allows items; SCM has been seen sending null there.
    let e = ApiErrorBody::parse(br#"{"code":-723,"description":"d","items":null}"#).unwrap();
    assert_eq!((e.code, e.items.len()), (Some(-723), 0));
    assert!(ApiErrorBody::parse(b"<html>").is_none());
}

// ---------------------------------------------------------------------------------------------
// SCM as it really behaves (issue 11)

#[tokio::test]
async fn dcv_is_refused_below_the_registrable_domain_and_subdomains_inherit_it() {
    let sim = ScmSim::start().await;
    sim.add_domain("kth.se");
    sim.add_domain("www.kth.se");
    let client = oauth_client(&sim);
    let err = client.start_cname("www.kth.se").await.unwrap_err();
    assert_eq!(err.code(), Some(-723), "{err:?}");
    assert!(err.to_string().contains("not a high-level domain"), "{err}");
    let err = client.submit_txt("www.kth.se").await.unwrap_err();
    assert_eq!(err.code(), Some(-723), "{err:?}");

    let today = Utc::now().date_naive();
    sim.set_dcv_validated("kth.se", today, today + chrono::Days::new(365));
    let inherited = client.dcv_status("www.kth.se").await.unwrap();
    assert_eq!(inherited.status, Some(ValidationStatus::Validated));
}

#[tokio::test]
async fn an_error_body_with_null_items_keeps_its_code_and_description() {
    let sim = ScmSim::start().await;
    sim.add_domain("www.items-null.edu");
    sim.set_error_items_null(true);
    let err = header_client(&sim)
        .start_cname("www.items-null.edu")
        .await
        .unwrap_err();
    match &err {
        SectigoError::Api {
            status: 400,
            code: Some(-723),
            description,
        } => assert!(description.contains("www.items-null.edu"), "{description}"),
        other => panic!("expected -723 with its description, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_domain_on_dcv_v2_is_a_404_with_its_code() {
    let sim = ScmSim::start().await;
    // OAuth2 clients use /api/dcv/v2 for start/submit, where the OpenAPI spec declares 404.
    let err = oauth_client(&sim)
        .start_cname("missing-v2.edu")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SectigoError::Api { status: 404, .. }),
        "{err:?}"
    );
    assert!(err.is_unknown_domain(), "{err:?}");
}

#[tokio::test]
async fn http_urls_are_refused_unless_explicitly_allowed() {
    let sim = ScmSim::start().await;
    let mut o = options(&sim, header_credentials());
    o.allow_insecure_http = false;
    let err = SectigoClient::new(o).unwrap_err();
    assert!(err.to_string().contains("http://"), "{err}");
    // The token URL too, even when the base URL were fine.
    let mut o = options(&sim, oauth_credentials(&sim));
    o.allow_insecure_http = false;
    o.base_url = Url::parse("https://admin.enterprise.sectigo.com/api").unwrap();
    let err = SectigoClient::new(o).unwrap_err();
    assert!(err.to_string().contains("token URL"), "{err}");
}

#[test]
fn config_refuses_http_urls_unless_allowed() {
    let toml_text = |allow: bool| {
        format!(
            r#"
            base_url = "http://127.0.0.1:1/api"
            allowed_suffixes = ["example.edu"]
            allow_insecure_http = {allow}
            [auth]
            mode = "headers"
            login = "api"
            customer_uri = "example"
            password_env = "CERTLINE_TEST_UNUSED"
            "#
        )
    };
    let refused: SectigoConfig = toml::from_str(&toml_text(false)).unwrap();
    let err = refused.validate().unwrap_err().to_string();
    assert!(
        err.contains("sectigo.base_url") && err.contains("https"),
        "{err}"
    );
    let allowed: SectigoConfig = toml::from_str(&toml_text(true)).unwrap();
    allowed.validate().unwrap();
}

#[tokio::test]
async fn a_redirect_names_the_url_and_the_likely_misconfiguration() {
    let sim = ScmSim::start().await;
    sim.redirect_next(1, "https://cert-manager.com/customer/certline-test");
    let err = header_client(&sim)
        .find_domain("r.example.edu")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SectigoError::Redirect { status: 301, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(&sim.api_url()), "{text}");
    assert!(text.contains("base_url"), "{text}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_429_with_retry_after_pauses_every_request_of_the_client() {
    let sim = ScmSim::start().await;
    sim.add_domain("p.example.edu");
    let client = header_client(&sim);
    sim.throttle_next(1, 2);
    let err = client.find_domain("p.example.edu").await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
    let started = std::time::Instant::now();
    let other = client.clone();
    let second = tokio::spawn(async move { other.find_domain("p.example.edu").await });
    // While the pause lasts, nothing reaches Sectigo (a lower bound, not a speed claim).
    tokio::time::sleep(Duration::from_millis(800)).await;
    if started.elapsed() < Duration::from_millis(1800) {
        assert_eq!(
            sim.total_requests(),
            1,
            "a request went out during the pause"
        );
    }
    assert!(second.await.unwrap().unwrap().is_some());
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(sim.total_requests(), 2);
}

#[tokio::test]
async fn an_idn_stored_as_u_label_is_found_by_its_a_label() {
    let sim = ScmSim::start().await;
    let id = sim.add_domain("bücher.example");
    let found = header_client(&sim)
        .find_domain("xn--bcher-kva.example")
        .await
        .unwrap()
        .expect("found under its Unicode spelling");
    assert_eq!(found.id, id);
}

#[tokio::test]
async fn the_token_endpoint_is_its_own_host() {
    let sim = ScmSim::start().await;
    let api = Url::parse(&sim.api_url()).unwrap();
    let token = Url::parse(&sim.token_url()).unwrap();
    assert_ne!(api.port(), token.port());
    // The API host does not issue tokens.
    let wrong = reqwest::Client::new()
        .post(format!(
            "http://{}:{}{}",
            api.host_str().unwrap(),
            api.port().unwrap(),
            scm_sim::TOKEN_PATH
        ))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 404);
    assert!(
        oauth_client(&sim)
            .find_domain("x.example.edu")
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn domains_of_other_organisations_are_invisible_but_exist() {
    let sim = ScmSim::start().await;
    sim.set_admin_org(Some(2622));
    sim.add_domain_for_org("hidden.example.edu", 9999);
    let client = header_client(&sim);
    assert_eq!(
        client.find_domain("hidden.example.edu").await.unwrap(),
        None
    );
    let outcome = client
        .create_domain(&create_request("hidden.example.edu"))
        .await
        .unwrap();
    assert_eq!(outcome, CreateOutcome::AlreadyExists);
}

#[tokio::test]
async fn requested_delegations_are_approved_only_by_an_mrao_and_only_once() {
    let sim = ScmSim::start().await;
    sim.set_delegations_need_approval(true);
    let client = header_client(&sim);
    let CreateOutcome::Created { id } = client
        .create_domain(&create_request("deleg.example.edu"))
        .await
        .unwrap()
    else {
        panic!("created");
    };
    let info = client.domain_info(id).await.unwrap();
    assert_eq!(info.delegation_status, Some(DelegationStatus::Requested));
    sim.set_admin_is_mrao(false);
    let err = client.approve_delegation(id, 2622).await.unwrap_err();
    assert_eq!(err.code(), Some(-3), "{err:?}");
    sim.set_admin_is_mrao(true);
    client.approve_delegation(id, 2622).await.unwrap();
    assert_eq!(sim.delegation_statuses("deleg.example.edu"), ["ACTIVE"]);
    let err = client.approve_delegation(id, 2622).await.unwrap_err();
    assert_eq!(err.code(), Some(-705), "{err:?}");
}

#[tokio::test]
async fn list_paging_works_when_x_total_count_is_sometimes_absent() {
    let sim = ScmSim::start().await;
    for i in 0..450 {
        sim.add_domain(&format!("page{i}.paging.edu"));
    }
    sim.add_domain("paging.edu");
    sim.set_total_count_sometimes_absent(true);
    let found = header_client(&sim)
        .find_domains_by_name("paging.edu")
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert!(sim.count(LIST) >= 3, "all pages were read");
}

#[tokio::test]
async fn over_tls_both_auth_modes_work_without_allowing_http() {
    let sim = ScmSim::start_tls().await;
    sim.add_domain("tls.example.edu");
    let root = sim.tls_root_pem().unwrap().as_bytes().to_vec();
    for credentials in [header_credentials(), oauth_credentials(&sim)] {
        let mut o = options(&sim, credentials);
        o.allow_insecure_http = false;
        o.extra_root_certificates_pem = vec![root.clone()];
        let client = SectigoClient::new(o).unwrap();
        assert!(
            client
                .find_domain("tls.example.edu")
                .await
                .unwrap()
                .is_some()
        );
    }
    assert_eq!(sim.token_requests(), 1);
    // Without trusting the simulator's certificate, the TLS handshake fails (transient).
    let mut o = options(&sim, header_credentials());
    o.allow_insecure_http = false;
    let err = SectigoClient::new(o)
        .unwrap()
        .find_domain("tls.example.edu")
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}
