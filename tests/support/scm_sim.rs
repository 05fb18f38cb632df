//! A stateful Sectigo Certificate Manager simulator for tests: a real HTTP server on
//! `127.0.0.1:0` built from `shared/reference/sectigo-scm-api.md` (§10 is its checklist).
//!
//! It keeps a domain inventory with delegations, CT-log monitoring and DCV state, answers
//! with SCM's paths, JSON shapes, status codes, error bodies and empty success bodies, and
//! issues short-lived OAuth2 tokens. Tests steer it at runtime:
//!
//! * **credentials**: [`ScmSim::set_header_credentials`], [`ScmSim::set_oauth_client`],
//!   [`ScmSim::set_token_lifetime`], [`ScmSim::revoke_tokens`];
//! * **faults**: latency, bursts of 5xx, 429 with `Retry-After`, connection resets (before
//!   or after the request took effect), truncated/garbage JSON, 401 for everything, and a
//!   seeded random transient failure rate;
//! * **DCV**: [`ScmSim::publish_dns`] is "the DNS" the simulated SCM looks at; a background
//!   check moves submitted orders to `VALIDATED` when the expected record is published;
//! * **counters**: requests in total, per route (`"POST /api/domain/v1"`), per domain name
//!   seen, and successful creations per name.
//!
//! Rules beyond the basic shapes, each with its source in `shared/reference/sectigo-scm-api.md`:
//!
//! * **Separate hosts** (§1d, §0): the OAuth2 token endpoint listens on its own port (as
//!   `auth.sso.sectigo.com` is not the API host); each host answers 404 for the other's paths.
//! * **Only high-level domains are validated** (§2c -723, §6e): DCV start/submit on a name
//!   that is not its own registrable domain (Public Suffix List) answers 400 -723.
//! * **Subdomains inherit validation** (§6e, SUNET): the DCV status and `validationStatus` of
//!   a subdomain are its registrable domain's when that one is in the inventory.
//! * **Visibility by the admin's organisation** (§1a "filtered based on the administrator's
//!   role"): with [`ScmSim::set_admin_org`], domains delegated only to other organisations
//!   are absent from lists, 404 by id and -727 for DCV, while a create still meets -700.
//! * **Delegation approval** (§4c, §10.6): `REQUESTED` delegations; approve via
//!   `POST /api/domain/v1/{id}/delegation/approve` only as MRAO (else 400 -3), and only
//!   while `REQUESTED` (else 400 -705).
//! * **DCV errors as 404 where the OpenAPI says so** (§2b: OAS declares 404 ErrorResponse
//!   per operation): -727 answers 404 on `/api/dcv/v2/...`, 400 on v1 (DOC25.5, CTOPHS).
//! * **Validation only at the announced `nextCheck`** (§6b v2 status, §6e: checks are
//!   scheduled, 2 h apart in Sectigo's example): a submitted order is looked at no sooner;
//!   tests shorten the interval with [`ScmSim::set_next_check_interval`].
//! * **Error bodies with `items: null`** (§2a OAS `ErrorResponse.items`) when switched on.
//! * **Page size** (§3): `size` above 200 is refused (-1601; unconfirmed, the harsh choice);
//!   [`ScmSim::set_total_count_sometimes_absent`] leaves `X-Total-Count` off every other page.
//!
//! Where the reference marks behaviour as unconfirmed (HTTP status of business errors, the
//! error code for an unknown id, the `name` filter semantics) the simulator picks the
//! harshest plausible behaviour: 400 for business errors, 404 + error body for unknown ids,
//! substring matching for `name`.

// Each test crate includes this module and uses a different subset of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{NaiveDate, Utc};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[path = "scm_sim_acme.rs"]
pub mod acme;

/// Default admin login accepted by header auth.
pub const LOGIN: &str = "certline-api";
/// Default admin password accepted by header auth.
pub const PASSWORD: &str = "sim-Pa55word-9f3c";
/// Default customer URI accepted by header auth.
pub const CUSTOMER_URI: &str = "certline-test";
/// Default OAuth2 client id.
pub const CLIENT_ID: &str = "certline-client";
/// Default OAuth2 client secret.
pub const CLIENT_SECRET: &str = "sim-Cl1ent-secret-77aa";
/// Token endpoint path (same as Sectigo's Keycloak realm).
pub const TOKEN_PATH: &str = "/auth/realms/apiclients/protocol/openid-connect/token";
/// Route key of the token endpoint, for [`ScmSim::count`].
pub const TOKEN_ROUTE: &str = "POST /auth/realms/apiclients/protocol/openid-connect/token";

/// How [`ScmSim::malform_next`] spoils a JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malform {
    /// Cut the body in half (an interrupted response).
    Truncated,
    /// Replace the body with something that is not JSON at all.
    Garbage,
}

/// DCV state of a simulated domain.
#[derive(Debug, Clone)]
struct Dcv {
    status: &'static str,
    method: Option<&'static str>,
    validation_date: Option<NaiveDate>,
    expiration_date: Option<NaiveDate>,
    order_status: &'static str,
    order_mode: Option<&'static str>,
    host: Option<String>,
    point: Option<String>,
    backend_id: Option<String>,
    submitted_date: Option<NaiveDate>,
    last_check: Option<chrono::DateTime<Utc>>,
    /// The announced `nextCheck`: SCM looks at the proof no sooner (§6b, §6e).
    next_check: Option<chrono::DateTime<Utc>>,
}

impl Default for Dcv {
    fn default() -> Self {
        Dcv {
            status: "NOT_VALIDATED",
            method: None,
            validation_date: None,
            expiration_date: None,
            order_status: "NOT_INITIATED",
            order_mode: None,
            host: None,
            point: None,
            backend_id: None,
            submitted_date: None,
            last_check: None,
            next_check: None,
        }
    }
}

#[derive(Debug, Clone)]
struct SimDelegation {
    org_id: u64,
    cert_types: Vec<String>,
    privileges: Vec<String>,
    status: &'static str,
}

#[derive(Debug, Clone)]
struct SimDomain {
    id: u64,
    name: String,
    description: Option<String>,
    active: bool,
    delegations: Vec<SimDelegation>,
    ct: Value,
    dcv: Dcv,
}

#[derive(Debug, Default)]
struct Faults {
    latency: Duration,
    fail_5xx: u32,
    fail_status: u16,
    throttle: u32,
    retry_after_secs: u64,
    resets: u32,
    resets_after: u32,
    malformed: u32,
    malform: Option<Malform>,
    unauthorized: bool,
    random_rate: f64,
    redirects: u32,
    redirect_to: String,
}

#[derive(Debug, Default)]
struct Counters {
    total: u64,
    routes: HashMap<String, u64>,
    names: HashMap<String, u64>,
    created: HashMap<String, u64>,
}

struct State {
    base_url: String,
    /// The organisation certline's admin belongs to (`None`: sees everything, an MRAO).
    admin_org: Option<u64>,
    /// Whether the admin may approve delegations (an MRAO).
    admin_is_mrao: bool,
    items_null: bool,
    total_count_sometimes_absent: bool,
    pages_served: u64,
    /// The request being answered is on `/api/dcv/v2/` (the OpenAPI host's paths, which
    /// declare 404 for an unknown entity).
    request_is_dcv_v2: bool,
    login: String,
    password: String,
    customer_uri: String,
    client_id: String,
    client_secret: String,
    token_lifetime: Duration,
    tokens: HashMap<String, Instant>,
    issued: Vec<String>,
    domains: BTreeMap<u64, SimDomain>,
    next_id: u64,
    next_backend_id: u64,
    dcv_enabled: bool,
    delegations_need_approval: bool,
    published: HashMap<String, Vec<String>>,
    /// A directory a test's DNS hook writes records into: the file named after the record's
    /// host (lower case, no trailing dot) holds its value, byte for byte.
    zone_dir: Option<std::path::PathBuf>,
    /// The `nextCheck` the simulator announces after each check (Sectigo shows 2 hours).
    next_check_interval: chrono::Duration,
    faults: Faults,
    counters: Counters,
    rng: StdRng,
    acme: acme::AcmeState,
}

/// A running simulator. Dropping it stops accepting connections.
pub struct ScmSim {
    addr: SocketAddr,
    token_addr: SocketAddr,
    /// PEM of the self-signed certificate when the simulator speaks HTTPS.
    tls_root_pem: Option<String>,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

impl Drop for ScmSim {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

type Resp = Response<Full<Bytes>>;

enum Action {
    Respond(Resp),
    Reset,
}

impl ScmSim {
    /// Starts a simulator with the default credentials ([`LOGIN`], [`PASSWORD`],
    /// [`CUSTOMER_URI`], [`CLIENT_ID`], [`CLIENT_SECRET`]), tokens valid for 5 minutes, an empty
    /// inventory and the background DCV check running every 20 ms.
    pub async fn start() -> ScmSim {
        Self::start_inner(None).await
    }

    /// Like [`ScmSim::start`], but both hosts speak HTTPS with a fresh self-signed
    /// certificate for `127.0.0.1` (rcgen + rustls); [`ScmSim::tls_root_pem`] is what a
    /// client must trust.
    pub async fn start_tls() -> ScmSim {
        let certified =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("rcgen");
        let cert_pem = certified.cert.pem();
        let cert_der = certified.cert.der().clone();
        let key_der = tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(
            certified.signing_key.serialize_der(),
        )
        .expect("key der");
        let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert_der], key_der)
            .expect("server certificate");
        let mut sim =
            Self::start_inner(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await;
        sim.tls_root_pem = Some(cert_pem);
        let base = format!("https://{}", sim.addr);
        sim.st().base_url = base;
        sim
    }

    /// The certificate to trust for a simulator from [`ScmSim::start_tls`].
    pub fn tls_root_pem(&self) -> Option<&str> {
        self.tls_root_pem.as_deref()
    }

    fn scheme(&self) -> &'static str {
        if self.tls_root_pem.is_some() {
            "https"
        } else {
            "http"
        }
    }

    async fn start_inner(tls: Option<tokio_rustls::TlsAcceptor>) -> ScmSim {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind simulator");
        let addr = listener.local_addr().expect("simulator address");
        let token_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind simulator token host");
        let token_addr = token_listener.local_addr().expect("token host address");
        let state = Arc::new(Mutex::new(State {
            base_url: format!("http://{addr}"),
            admin_org: None,
            admin_is_mrao: true,
            items_null: false,
            total_count_sometimes_absent: false,
            pages_served: 0,
            request_is_dcv_v2: false,
            login: LOGIN.into(),
            password: PASSWORD.into(),
            customer_uri: CUSTOMER_URI.into(),
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            token_lifetime: Duration::from_secs(300),
            tokens: HashMap::new(),
            issued: Vec::new(),
            domains: BTreeMap::new(),
            next_id: 400,
            next_backend_id: 100_500,
            dcv_enabled: true,
            delegations_need_approval: false,
            published: HashMap::new(),
            zone_dir: None,
            next_check_interval: chrono::Duration::hours(2),
            faults: Faults::default(),
            counters: Counters::default(),
            rng: StdRng::seed_from_u64(0x5ec7_1600),
            acme: acme::AcmeState::default(),
        }));
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            Host::Api,
            tls.clone(),
            state.clone(),
            stop.clone(),
        ));
        tokio::spawn(accept_loop(
            token_listener,
            Host::Token,
            tls,
            state.clone(),
            stop.clone(),
        ));
        tokio::spawn(dcv_checker(state.clone(), stop.clone()));
        ScmSim {
            addr,
            token_addr,
            state,
            stop,
            tls_root_pem: None,
        }
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("simulator state poisoned")
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.addr)
    }

    /// The API root the client should use: `http://127.0.0.1:<port>/api`.
    pub fn api_url(&self) -> String {
        format!("{}://{}/api", self.scheme(), self.addr)
    }

    /// The OAuth2 token endpoint, on its own host (port), as Sectigo's is.
    pub fn token_url(&self) -> String {
        format!("{}://{}{TOKEN_PATH}", self.scheme(), self.token_addr)
    }

    // --- strictness switches ------------------------------------------------------------

    /// The admin belongs to `org` (a RAO/DRAO): domains delegated only elsewhere are
    /// invisible to it, and it may not approve delegations.
    pub fn set_admin_org(&self, org: Option<u64>) {
        let mut s = self.st();
        s.admin_org = org;
        s.admin_is_mrao = org.is_none();
    }

    /// Whether the admin may approve delegations.
    pub fn set_admin_is_mrao(&self, yes: bool) {
        self.st().admin_is_mrao = yes;
    }

    /// Error bodies carry `"items": null` (the OpenAPI `ErrorResponse` field).
    pub fn set_error_items_null(&self, on: bool) {
        self.st().items_null = on;
    }

    /// `X-Total-Count` is left off every other list page.
    pub fn set_total_count_sometimes_absent(&self, on: bool) {
        self.st().total_count_sometimes_absent = on;
    }

    /// Adds a domain delegated (ACTIVE) only to `org`.
    pub fn add_domain_for_org(&self, name: &str, org: u64) -> u64 {
        let id = self.add_domain(name);
        self.st()
            .domains
            .get_mut(&id)
            .expect("just added")
            .delegations[0]
            .org_id = org;
        id
    }

    /// Suspends (`active = false`) or activates a domain.
    pub fn set_domain_active(&self, name: &str, active: bool) {
        let mut s = self.st();
        let id = find_by_name(&s, name).expect("set_domain_active: unknown domain");
        s.domains.get_mut(&id).expect("found").active = active;
    }

    /// The delegation statuses of a domain.
    pub fn delegation_statuses(&self, name: &str) -> Vec<String> {
        let s = self.st();
        find_by_name(&s, name)
            .map(|id| {
                s.domains[&id]
                    .delegations
                    .iter()
                    .map(|d| d.status.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    // --- credentials --------------------------------------------------------------------

    /// Which header credentials are valid from now on.
    pub fn set_header_credentials(&self, login: &str, password: &str, customer_uri: &str) {
        let mut s = self.st();
        s.login = login.into();
        s.password = password.into();
        s.customer_uri = customer_uri.into();
    }

    /// Which OAuth2 client is valid from now on (already issued tokens stay valid).
    pub fn set_oauth_client(&self, client_id: &str, client_secret: &str) {
        let mut s = self.st();
        s.client_id = client_id.into();
        s.client_secret = client_secret.into();
    }

    /// Lifetime of tokens issued from now on; `expires_in` is sent in whole seconds
    /// (at least 1).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.st().token_lifetime = lifetime;
    }

    /// Invalidates every issued token (the next API call with one gets 401).
    pub fn revoke_tokens(&self) {
        self.st().tokens.clear();
    }

    /// Every access token ever issued, to check that none leaks into logs.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.st().issued.clone()
    }

    // --- inventory ----------------------------------------------------------------------

    /// Adds an active domain delegated (ACTIVE) to org 1 for SSL; returns its id.
    pub fn add_domain(&self, name: &str) -> u64 {
        let mut s = self.st();
        let id = s.next_id;
        s.next_id += 1;
        s.domains.insert(
            id,
            SimDomain {
                id,
                name: name.to_ascii_lowercase(),
                description: None,
                active: true,
                delegations: vec![SimDelegation {
                    org_id: 1,
                    cert_types: vec!["SSL".into()],
                    privileges: vec!["DOMAIN".into()],
                    status: "ACTIVE",
                }],
                ct: json!({"enabled": false, "includeSubdomains": false}),
                dcv: Dcv::default(),
            },
        );
        id
    }

    /// The id of the domain named exactly `name`.
    pub fn domain_id(&self, name: &str) -> Option<u64> {
        let s = self.st();
        find_by_name(&s, name)
    }

    /// The domain as `GET /api/domain/v1/{id}` would show it.
    pub fn domain_json(&self, name: &str) -> Option<Value> {
        let s = self.st();
        let id = find_by_name(&s, name)?;
        Some(domain_json(&s, &s.domains[&id]))
    }

    /// Number of domains in the inventory.
    pub fn domain_count(&self) -> usize {
        self.st().domains.len()
    }

    /// Marks DCV of `name` as validated on `validated` until `expires`.
    pub fn set_dcv_validated(&self, name: &str, validated: NaiveDate, expires: NaiveDate) {
        let mut s = self.st();
        let id = find_by_name(&s, name).expect("set_dcv_validated: unknown domain");
        let d = &mut s.domains.get_mut(&id).expect("id just found").dcv;
        d.status = "VALIDATED";
        d.method = Some("EMAIL");
        d.validation_date = Some(validated);
        d.expiration_date = Some(expires);
    }

    /// With DCV disabled for the customer, domain details omit the DCV fields.
    pub fn set_dcv_enabled(&self, enabled: bool) {
        self.st().dcv_enabled = enabled;
    }

    /// New delegations start `REQUESTED` (waiting for an MRAO) instead of `ACTIVE`.
    pub fn set_delegations_need_approval(&self, yes: bool) {
        self.st().delegations_need_approval = yes;
    }

    // --- DCV "DNS" ----------------------------------------------------------------------

    /// Publishes a DNS record value at `host` (CNAME target or TXT text) for the simulated
    /// DCV check to find. Host names compare case-insensitively without trailing dots.
    pub fn publish_dns(&self, host: &str, value: &str) {
        self.st()
            .published
            .entry(dns_key(host))
            .or_default()
            .push(value.to_string());
    }

    /// Removes every record at `host`.
    pub fn unpublish_dns(&self, host: &str) {
        self.st().published.remove(&dns_key(host));
    }

    /// Makes the DCV check also look for records in `dir`, where a test's DNS hook writes
    /// them: the file `dir/<host>` (host lower-cased, without the trailing dot) holds the
    /// record's value, compared byte for byte.
    pub fn set_zone_dir(&self, dir: &std::path::Path) {
        self.st().zone_dir = Some(dir.to_path_buf());
    }

    /// Sets the `nextCheck` interval the simulator announces for submitted orders.
    pub fn set_next_check_interval(&self, interval: Duration) {
        self.st().next_check_interval =
            chrono::Duration::from_std(interval).expect("interval fits");
    }

    /// Marks a domain's DCV expired (it was validated once, and that ran out).
    pub fn set_dcv_expired(&self, name: &str) {
        let mut s = self.st();
        let id = find_by_name(&s, name).expect("domain exists");
        let today = Utc::now().date_naive();
        let d = &mut s.domains.get_mut(&id).expect("exists").dcv;
        d.status = "EXPIRED";
        d.method = Some("CNAME_CSR_HASH");
        d.validation_date = today.checked_sub_days(chrono::Days::new(400));
        d.expiration_date = today.checked_sub_days(chrono::Days::new(35));
    }

    /// The DCV status of a domain as the simulator holds it.
    pub fn dcv_status_of(&self, name: &str) -> Option<String> {
        let s = self.st();
        find_by_name(&s, name).map(|id| s.domains[&id].dcv.status.to_string())
    }

    /// Runs the DCV check once, now, whatever `nextCheck` said (the background check runs
    /// every 20 ms but looks at an order only once its announced `nextCheck` has come).
    pub fn check_dcv_now(&self) {
        run_dcv_checks(&mut self.st(), true);
    }

    // --- faults -------------------------------------------------------------------------

    /// Delay every request by `latency` before answering.
    pub fn set_latency(&self, latency: Duration) {
        self.st().faults.latency = latency;
    }

    /// Answer the next `n` requests with `status` (a 5xx) and an error body.
    pub fn fail_next(&self, n: u32, status: u16) {
        let mut s = self.st();
        s.faults.fail_5xx = n;
        s.faults.fail_status = status;
    }

    /// Answer the next `n` requests with 429 and `Retry-After: retry_after_secs`.
    pub fn throttle_next(&self, n: u32, retry_after_secs: u64) {
        let mut s = self.st();
        s.faults.throttle = n;
        s.faults.retry_after_secs = retry_after_secs;
    }

    /// Reset the connection (RST, no response) on the next `n` requests, before they take
    /// effect.
    pub fn reset_next(&self, n: u32) {
        self.st().faults.resets = n;
    }

    /// Carry out the next `n` requests, then reset the connection instead of answering:
    /// the client cannot know the request took effect.
    pub fn reset_after_next(&self, n: u32) {
        self.st().faults.resets_after = n;
    }

    /// Spoil the JSON body of the next `n` successful responses that have one.
    pub fn malform_next(&self, n: u32, how: Malform) {
        let mut s = self.st();
        s.faults.malformed = n;
        s.faults.malform = Some(how);
    }

    /// Answer the next `n` requests with `301 Moved Permanently` to `location` (what a web
    /// server in front of the wrong base URL does).
    pub fn redirect_next(&self, n: u32, location: &str) {
        let mut s = self.st();
        s.faults.redirects = n;
        s.faults.redirect_to = location.into();
    }

    /// Answer every request (token endpoint included) with 401 until switched off.
    pub fn set_unauthorized(&self, on: bool) {
        self.st().faults.unauthorized = on;
    }

    /// Fail this fraction (0.0..=1.0) of requests at random (half 503, half reset), drawn
    /// from a generator seeded with `seed` so a failing run can be repeated.
    pub fn set_random_failure_rate(&self, rate: f64, seed: u64) {
        let mut s = self.st();
        s.faults.random_rate = rate.clamp(0.0, 1.0);
        s.rng = StdRng::seed_from_u64(seed);
    }

    /// Switches every fault off.
    pub fn clear_faults(&self) {
        self.st().faults = Faults::default();
    }

    // --- counters -----------------------------------------------------------------------

    /// Requests received, faulted ones included.
    pub fn total_requests(&self) -> u64 {
        self.st().counters.total
    }

    /// Requests for one route, e.g. `"GET /api/domain/v1"`, `"GET /api/domain/v1/{id}"`,
    /// `"PUT /api/domain/v1/{id}/monitoring"`, `"POST /api/dcv/v2/validation/status"`,
    /// [`TOKEN_ROUTE`].
    pub fn count(&self, route: &str) -> u64 {
        self.st().counters.routes.get(route).copied().unwrap_or(0)
    }

    /// Token endpoint requests.
    pub fn token_requests(&self) -> u64 {
        self.count(TOKEN_ROUTE)
    }

    /// Requests that named this domain (list filter, create body, DCV body, or an id that
    /// belongs to it), counted only when the request got past auth and faults.
    pub fn name_hits(&self, name: &str) -> u64 {
        self.st()
            .counters
            .names
            .get(&name.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// Successful creations of this domain.
    pub fn created(&self, name: &str) -> u64 {
        self.st()
            .counters
            .created
            .get(&name.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// Sets every counter back to zero.
    pub fn reset_counters(&self) {
        self.st().counters = Counters::default();
    }
}

// ---------------------------------------------------------------------------------------------
// Connections

/// Which of the two simulated hosts a connection came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Host {
    Api,
    Token,
}

async fn accept_loop(
    listener: TcpListener,
    host: Host,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        // Keep a second handle on the socket so a reset fault can set SO_LINGER=0 and close
        // it: the client then sees a real RST with no response, not a clean close.
        let Ok(std_stream) = stream.into_std() else {
            continue;
        };
        let Ok(spare) = std_stream.try_clone() else {
            continue;
        };
        let Ok(stream) = tokio::net::TcpStream::from_std(std_stream) else {
            continue;
        };
        let kill = CancellationToken::new();
        let state = state.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve(stream, host, state, kill, stop, spare).await,
                Some(acceptor) => {
                    if let Ok(tls_stream) = acceptor.accept(stream).await {
                        serve(tls_stream, host, state, kill, stop, spare).await;
                    }
                }
            }
        });
    }
}

/// Serves one connection (plain or TLS) until it ends, a reset fault kills it, or the
/// simulator stops.
async fn serve<IO>(
    io: IO,
    host: Host,
    state: Arc<Mutex<State>>,
    kill: CancellationToken,
    stop: CancellationToken,
    spare: std::net::TcpStream,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc_kill = kill.clone();
    let service = service_fn(move |req| handle(state.clone(), host, svc_kill.clone(), req));
    let mut conn = Box::pin(http1::Builder::new().serve_connection(TokioIo::new(io), service));
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = kill.cancelled() => {
            let _ = socket2::SockRef::from(&spare).set_linger(Some(Duration::ZERO));
        }
        _ = stop.cancelled() => {}
    }
    drop(conn);
    drop(spare);
}

async fn handle(
    state: Arc<Mutex<State>>,
    host: Host,
    kill: CancellationToken,
    req: Request<Incoming>,
) -> Result<Resp, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let route = Route::of(&parts.method, parts.uri.path());
    // The token endpoint and the API are different hosts.
    if matches!(route, Route::Token) != (host == Host::Token) {
        return Ok(error(404, -1, "Unknown error."));
    }
    let (latency, pre) = {
        let mut s = state.lock().expect("simulator state poisoned");
        s.counters.total += 1;
        *s.counters
            .routes
            .entry(route.key(&parts.method, parts.uri.path()))
            .or_default() += 1;
        (s.faults.latency, pre_fault(&mut s, &route))
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match pre {
        Some(Action::Respond(r)) => return Ok(r),
        Some(Action::Reset) => {
            kill.cancel();
            std::future::pending::<()>().await;
        }
        None => {}
    }
    let (response, reset_after) = {
        let mut s = state.lock().expect("simulator state poisoned");
        let query = parts.uri.query().unwrap_or("").to_string();
        s.request_is_dcv_v2 = parts.uri.path().starts_with("/api/dcv/v2/");
        let mut response = dispatch(&mut s, &route, &parts.headers, &query, &body);
        let reset_after = if s.faults.resets_after > 0 {
            s.faults.resets_after -= 1;
            true
        } else {
            false
        };
        if !reset_after {
            malform(&mut s, &mut response);
        }
        (response, reset_after)
    };
    if reset_after {
        kill.cancel();
        std::future::pending::<()>().await;
    }
    Ok(response)
}

fn pre_fault(s: &mut State, route: &Route) -> Option<Action> {
    let f = &mut s.faults;
    if f.unauthorized {
        return Some(Action::Respond(if matches!(route, Route::Token) {
            oauth_refusal()
        } else {
            unknown_user()
        }));
    }
    if f.resets > 0 {
        f.resets -= 1;
        return Some(Action::Reset);
    }
    if f.redirects > 0 {
        f.redirects -= 1;
        let mut r = empty(301);
        r.headers_mut().insert(
            "location",
            HeaderValue::from_str(&f.redirect_to).expect("ascii location"),
        );
        return Some(Action::Respond(r));
    }
    if f.fail_5xx > 0 {
        f.fail_5xx -= 1;
        return Some(Action::Respond(error(
            f.fail_status,
            -2,
            "Internal error. Please contact Support for details.",
        )));
    }
    if f.throttle > 0 {
        f.throttle -= 1;
        let mut r = error(429, -1, "Too many requests.");
        r.headers_mut().insert(
            "retry-after",
            HeaderValue::from_str(&f.retry_after_secs.to_string()).expect("digits"),
        );
        return Some(Action::Respond(r));
    }
    if f.random_rate > 0.0 {
        let rate = f.random_rate;
        if s.rng.random_bool(rate) {
            return Some(if s.rng.random_bool(0.5) {
                Action::Reset
            } else {
                Action::Respond(error(503, -2, "Service temporarily unavailable."))
            });
        }
    }
    None
}

fn malform(s: &mut State, response: &mut Resp) {
    let f = &mut s.faults;
    if f.malformed == 0 || !response.status().is_success() {
        return;
    }
    let body = response.body().clone();
    let Ok(bytes) = futures_now(body) else {
        return;
    };
    if bytes.is_empty() {
        return;
    }
    f.malformed -= 1;
    let spoiled = match f.malform.unwrap_or(Malform::Truncated) {
        Malform::Truncated => bytes.slice(..bytes.len() / 2),
        Malform::Garbage => Bytes::from_static(b"<html><body>Gateway hiccup</body></html>"),
    };
    *response.body_mut() = Full::new(spoiled);
}

/// `Full` bodies are ready immediately; read one without an executor.
fn futures_now(body: Full<Bytes>) -> Result<Bytes, ()> {
    use std::task::{Context, Poll, Waker};
    let mut fut = std::pin::pin!(body.collect());
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(c)) => Ok(c.to_bytes()),
        _ => Err(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Routing

enum Route {
    Token,
    ListDomains,
    CreateDomain,
    DomainDetails(u64),
    Monitoring(u64),
    ApproveDelegation(u64),
    DcvList,
    DcvStatus,
    StartCname,
    SubmitCname,
    SubmitTxt,
    Acme(acme::AcmeRoute),
    NotFound,
    MethodNotAllowed,
}

impl Route {
    fn of(method: &Method, path: &str) -> Route {
        if path == TOKEN_PATH {
            return if method == Method::POST {
                Route::Token
            } else {
                Route::MethodNotAllowed
            };
        }
        let Some(rest) = path.strip_prefix("/api/") else {
            return Route::NotFound;
        };
        let seg: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        if let Some(r) = acme::route(method, &seg) {
            return Route::Acme(r);
        }
        let m = method.clone();
        match seg.as_slice() {
            ["domain", "v1"] => match m {
                Method::GET => Route::ListDomains,
                Method::POST => Route::CreateDomain,
                _ => Route::MethodNotAllowed,
            },
            ["domain", "v1", id] => match (m, id.parse()) {
                (Method::GET, Ok(id)) => Route::DomainDetails(id),
                (_, Ok(_)) => Route::MethodNotAllowed,
                _ => Route::NotFound,
            },
            ["domain", "v1", id, "monitoring"] => match (m, id.parse()) {
                (Method::PUT, Ok(id)) => Route::Monitoring(id),
                (_, Ok(_)) => Route::MethodNotAllowed,
                _ => Route::NotFound,
            },
            ["domain", "v1", id, "delegation", "approve"] => match (m, id.parse()) {
                (Method::POST, Ok(id)) => Route::ApproveDelegation(id),
                (_, Ok(_)) => Route::MethodNotAllowed,
                _ => Route::NotFound,
            },
            ["dcv", "v1" | "v2", "validation"] if m == Method::GET => Route::DcvList,
            ["dcv", "v1" | "v2", "validation", "status"] if m == Method::POST => Route::DcvStatus,
            ["dcv", "v1" | "v2", "validation", "start", "domain", "cname"] if m == Method::POST => {
                Route::StartCname
            }
            [
                "dcv",
                "v1" | "v2",
                "validation",
                "submit",
                "domain",
                "cname",
            ] if m == Method::POST => Route::SubmitCname,
            ["dcv", "v1" | "v2", "validation", "submit", "domain", "txt"] if m == Method::POST => {
                Route::SubmitTxt
            }
            _ => Route::NotFound,
        }
    }

    /// Counter key: method and path with numeric ids replaced by `{id}`.
    fn key(&self, method: &Method, path: &str) -> String {
        let templ: Vec<String> = path
            .split('/')
            .map(|s| {
                if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                    "{id}".to_string()
                } else {
                    s.to_string()
                }
            })
            .collect();
        format!("{method} {}", templ.join("/"))
    }
}

fn dispatch(
    s: &mut State,
    route: &Route,
    headers: &hyper::HeaderMap,
    query: &str,
    body: &[u8],
) -> Resp {
    match route {
        Route::Token => return token(s, body),
        Route::NotFound => return error(404, -1, "Unknown error."),
        Route::MethodNotAllowed => return error(405, -1, "Unknown error."),
        _ => {}
    }
    if let Some(refusal) = check_auth(s, headers) {
        return refusal;
    }
    match route {
        Route::ListDomains => list_domains(s, query),
        Route::ApproveDelegation(id) => approve_delegation(s, *id, body),
        Route::CreateDomain => create_domain(s, body),
        Route::DomainDetails(id) => match s.domains.get(id).filter(|d| visible(s, d)) {
            Some(d) => {
                let name = d.name.clone();
                note_name(s, &name);
                json_response(200, &domain_json(s, &s.domains[id]))
            }
            None => error(404, -1, "Entity not found."),
        },
        Route::Monitoring(id) => monitoring(s, *id, body),
        Route::Acme(r) => acme::dispatch(s, r, query, body),
        Route::DcvList => dcv_list(s, query),
        Route::DcvStatus => with_dcv_domain(s, body, |s, id| {
            let dcv = inherited_dcv(s, id);
            json_response(200, &dcv_status_json(&dcv, s.next_check_interval))
        }),
        Route::StartCname => with_dcv_domain(s, body, |s, id| {
            if let Some(refusal) = not_high_level(s, id) {
                return refusal;
            }
            let a: u128 = s.rng.random();
            let b: u128 = s.rng.random();
            let c: u128 = s.rng.random();
            let d = s.domains.get_mut(&id).expect("checked");
            let host = format!("_{a:032x}.{}.", d.name);
            let point = format!("{b:032x}.{c:032x}.sectigo.com.");
            d.dcv.order_mode = Some("CNAME");
            d.dcv.host = Some(host.clone());
            d.dcv.point = Some(point.clone());
            json_response(200, &json!({"host": host, "point": point}))
        }),
        Route::SubmitCname => with_dcv_domain(s, body, |s, id| {
            if let Some(refusal) = not_high_level(s, id) {
                return refusal;
            }
            let backend = next_backend_id(s);
            let interval = s.next_check_interval;
            let d = s.domains.get_mut(&id).expect("checked");
            if d.dcv.order_mode != Some("CNAME") || d.dcv.host.is_none() {
                return error(
                    400,
                    -1603,
                    &format!("Error while validating the domain {}", d.name),
                );
            }
            submit(&mut d.dcv, backend.clone(), interval);
            json_response(
                200,
                &json!({"status": d.dcv.status, "orderStatus": "SUBMITTED",
                        "message": "Submitted successfully", "orderBackendId": backend}),
            )
        }),
        Route::SubmitTxt => with_dcv_domain(s, body, |s, id| {
            if let Some(refusal) = not_high_level(s, id) {
                return refusal;
            }
            let backend = next_backend_id(s);
            let point = txt_value(&mut s.rng);
            let interval = s.next_check_interval;
            let d = s.domains.get_mut(&id).expect("checked");
            let host = format!("_pki-validation.{}.", d.name);
            d.dcv.order_mode = Some("TXT");
            d.dcv.host = Some(host.clone());
            d.dcv.point = Some(point.clone());
            submit(&mut d.dcv, backend.clone(), interval);
            json_response(
                200,
                &json!({"status": d.dcv.status, "orderStatus": "SUBMITTED",
                        "message": "Submitted successfully", "orderBackendId": backend,
                        "host": host, "point": point}),
            )
        }),
        Route::Token | Route::NotFound | Route::MethodNotAllowed => unreachable!("handled above"),
    }
}

fn check_auth(s: &State, headers: &hyper::HeaderMap) -> Option<Resp> {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(auth) = h("authorization") {
        let valid = auth
            .strip_prefix("Bearer ")
            .and_then(|t| s.tokens.get(t))
            .is_some_and(|exp| Instant::now() < *exp);
        if valid {
            return None;
        }
        let mut r = json_response(
            401,
            &json!({"description": "Authentication information is missing or invalid."}),
        );
        r.headers_mut().insert(
            "www-authenticate",
            HeaderValue::from_str(&format!(
                "Bearer authorization_uri=\"{}{TOKEN_PATH}\"",
                s.base_url
            ))
            .expect("ascii"),
        );
        return Some(r);
    }
    if h("login") == Some(&s.login)
        && h("password") == Some(&s.password)
        && h("customeruri") == Some(&s.customer_uri)
    {
        None
    } else {
        Some(unknown_user())
    }
}

fn token(s: &mut State, body: &[u8]) -> Resp {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return json_response(
            400,
            &json!({"error": "unsupported_grant_type", "error_description": "Unsupported grant_type"}),
        );
    }
    if form.get("client_id") != Some(&s.client_id)
        || form.get("client_secret") != Some(&s.client_secret)
    {
        return oauth_refusal();
    }
    let raw: u128 = s.rng.random();
    let token = format!("simtok-{raw:032x}");
    let lifetime = s.token_lifetime;
    s.tokens.insert(token.clone(), Instant::now() + lifetime);
    s.issued.push(token.clone());
    json_response(
        200,
        &json!({"access_token": token, "expires_in": lifetime.as_secs().max(1),
                "refresh_expires_in": 0, "token_type": "Bearer", "not-before-policy": 0,
                "scope": "profile email"}),
    )
}

/// `position` (default 0) and `size` (default 10, at most 200: the OAS `maximum`; what SCM
/// does above it is unconfirmed, so refusing is the fail-safe model) of a list request.
/// The error is SCM's -1601 description for the field at fault.
fn page_bounds(q: &HashMap<String, String>) -> Result<(usize, usize), &'static str> {
    let size: usize = match q.get("size").map(|v| v.parse()) {
        None => 10,
        Some(Ok(n)) if n <= 200 => n,
        _ => return Err("Field ''size'' has invalid value."),
    };
    let position: usize = match q.get("position").map(|v| v.parse()) {
        None => 0,
        Some(Ok(n)) => n,
        _ => return Err("Field ''position'' has invalid value."),
    };
    Ok((position, size))
}

fn list_domains(s: &mut State, query: &str) -> Resp {
    let q: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let (position, size) = match page_bounds(&q) {
        Ok(bounds) => bounds,
        Err(message) => return error(400, -1601, message),
    };
    if let Some(n) = q.get("name") {
        note_name(s, n);
    }
    let name = q.get("name").map(|n| n.to_ascii_lowercase());
    let org: Option<u64> = q.get("orgId").and_then(|o| o.parse().ok());
    let state_filter = q.get("state").map(|v| v.to_ascii_lowercase());
    let matching: Vec<&SimDomain> = s
        .domains
        .values()
        .filter(|d| visible(s, d))
        .filter(|d| name.as_ref().is_none_or(|n| d.name.contains(n.as_str())))
        .filter(|d| org.is_none_or(|o| d.delegations.iter().any(|g| g.org_id == o)))
        .filter(|d| match state_filter.as_deref() {
            Some("active") => d.active,
            Some("inactive") => !d.active,
            _ => true,
        })
        .collect();
    let page: Vec<Value> = matching
        .iter()
        .skip(position)
        .take(size)
        .map(|d| json!({"id": d.id, "name": d.name}))
        .collect();
    let total = matching.len() as u64;
    let mut r = json_response(200, &Value::Array(page));
    s.pages_served += 1;
    if !(s.total_count_sometimes_absent && s.pages_served.is_multiple_of(2)) {
        r.headers_mut()
            .insert("x-total-count", HeaderValue::from(total));
    }
    r
}

fn create_domain(s: &mut State, body: &[u8]) -> Resp {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return error(400, -1, "Unknown error.");
    };
    let Some(name) = v.get("name").and_then(Value::as_str) else {
        return error(400, -7, "name is required but missing.");
    };
    let name = name.to_ascii_lowercase();
    note_name(s, &name);
    if !valid_domain_name(&name) {
        return error(400, -732, "Invalid domain name.");
    }
    if name.len() < 4 {
        return error(
            400,
            -712,
            "The domain name should be at least 4 characters in length.",
        );
    }
    if name.len() > 255 {
        return error(
            400,
            -713,
            "The domain name should be at most 255 characters in length.",
        );
    }
    let delegations = v
        .get("delegations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if delegations.is_empty() {
        return error(
            400,
            -709,
            "Please delegate domain to at least one organization or department.",
        );
    }
    let mut sim_delegations = Vec::new();
    let status = if s.delegations_need_approval {
        "REQUESTED"
    } else {
        "ACTIVE"
    };
    for d in &delegations {
        let Some(org_id) = d.get("orgId").and_then(Value::as_u64).filter(|o| *o >= 1) else {
            return error(400, -7, "orgId is required but missing.");
        };
        let strings = |key: &str| -> Vec<String> {
            d.get(key)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let cert_types = strings("certTypes");
        if cert_types.is_empty() {
            return error(400, -7, "certTypes is required but missing.");
        }
        sim_delegations.push(SimDelegation {
            org_id,
            cert_types,
            privileges: strings("domainCertificateRequestPrivileges"),
            status,
        });
    }
    let ct = match v.get("ctLogMonitoring") {
        Some(ct) => match monitoring_value(ct) {
            Ok(ct) => ct,
            Err(msg) => return error(400, -7, msg),
        },
        None => json!({"enabled": false, "includeSubdomains": false}),
    };
    if find_by_name(s, &name).is_some() {
        return error(400, -700, "Such domain already exists");
    }
    let id = s.next_id;
    s.next_id += 1;
    s.domains.insert(
        id,
        SimDomain {
            id,
            name: name.clone(),
            description: v
                .get("description")
                .and_then(Value::as_str)
                .map(String::from),
            active: v.get("active").and_then(Value::as_bool).unwrap_or(true),
            delegations: sim_delegations,
            ct,
            dcv: Dcv::default(),
        },
    );
    *s.counters.created.entry(name).or_default() += 1;
    let mut r = empty(201);
    r.headers_mut().insert(
        "location",
        HeaderValue::from_str(&format!("{}/api/domain/v1/{id}", s.base_url)).expect("ascii"),
    );
    r
}

/// The stored monitoring object, or the description of a -7 error.
fn monitoring_value(v: &Value) -> Result<Value, &'static str> {
    let enabled = v.get("enabled").and_then(Value::as_bool).unwrap_or(false);
    let include = v
        .get("includeSubdomains")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let bucket = v.get("bucketId").and_then(Value::as_str);
    if enabled && bucket.is_none_or(str::is_empty) {
        return Err("bucketId is required but missing.");
    }
    let mut out = json!({"enabled": enabled, "includeSubdomains": include});
    if let Some(b) = bucket {
        out["bucketId"] = json!(b);
    }
    Ok(out)
}

fn monitoring(s: &mut State, id: u64, body: &[u8]) -> Resp {
    let Some(name) = s.domains.get(&id).map(|d| d.name.clone()) else {
        return error(404, -1, "Entity not found.");
    };
    note_name(s, &name);
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return error(400, -1, "Unknown error.");
    };
    match monitoring_value(&v) {
        Ok(ct) => {
            s.domains.get_mut(&id).expect("checked").ct = ct;
            empty(200)
        }
        Err(msg) => error(400, -7, msg),
    }
}

fn with_dcv_domain(s: &mut State, body: &[u8], f: impl FnOnce(&mut State, u64) -> Resp) -> Resp {
    let domain = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("domain").and_then(Value::as_str).map(str::to_string));
    let Some(domain) = domain else {
        return error(400, -7, "domain is required but missing.");
    };
    note_name(s, &domain);
    match find_by_name(s, &domain).filter(|id| visible(s, &s.domains[id])) {
        Some(id) => f(s, id),
        None => error(
            if s.request_is_dcv_v2 { 404 } else { 400 },
            -727,
            &format!("The domain ''{domain}'' does not exist."),
        ),
    }
}

fn dcv_list(s: &mut State, query: &str) -> Resp {
    let q: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let size: usize = q.get("size").and_then(|v| v.parse().ok()).unwrap_or(10);
    if size > 200 {
        return error(400, -1601, "Field ''size'' has invalid value.");
    }
    let position: usize = q.get("position").and_then(|v| v.parse().ok()).unwrap_or(0);
    let page: Vec<Value> = s
        .domains
        .values()
        .skip(position)
        .take(size)
        .map(|d| {
            json!({"domain": d.name, "dcvStatus": d.dcv.status, "dcvMethod": d.dcv.method,
                   "dcvOrderStatus": d.dcv.order_status,
                   "dcvOrderMethod": d.dcv.order_mode.unwrap_or("EMAIL"),
                   "expirationDate": d.dcv.expiration_date.map(|x| x.to_string())})
        })
        .collect();
    let mut r = json_response(200, &Value::Array(page));
    r.headers_mut()
        .insert("x-total-count", HeaderValue::from(s.domains.len() as u64));
    r
}

fn submit(dcv: &mut Dcv, backend: String, next_check_interval: chrono::Duration) {
    dcv.order_status = "SUBMITTED";
    dcv.next_check = Some(Utc::now() + next_check_interval);
    dcv.submitted_date = Some(Utc::now().date_naive());
    dcv.backend_id = Some(backend);
}

fn next_backend_id(s: &mut State) -> String {
    s.next_backend_id += 1;
    s.next_backend_id.to_string()
}

/// A TXT validation value like Sectigo's (`F(U_t|L%>8]iU6Yx\CFm;0O8DViEQ/|``): printable
/// ASCII, always with a backslash and a backtick so clients' quoting is exercised.
fn txt_value(rng: &mut StdRng) -> String {
    let mut v: String = (0..30)
        .map(|_| char::from(rng.random_range(b'!'..=b'~')))
        .filter(|c| *c != '"')
        .collect();
    v.insert(5, '\\');
    v.push('`');
    v
}

fn dcv_status_json(d: &Dcv, next_check_interval: chrono::Duration) -> Value {
    let mut v = json!({"status": d.status, "orderStatus": d.order_status});
    let date = |x: Option<NaiveDate>| x.map(|x| Value::String(x.to_string()));
    if let Some(x) = date(d.validation_date) {
        v["validationDate"] = x;
    }
    if let Some(x) = date(d.expiration_date) {
        v["expirationDate"] = x;
    }
    if let Some(m) = d.order_mode {
        v["orderMode"] = json!(m);
    }
    if d.order_status == "SUBMITTED" {
        v["host"] = json!(d.host);
        v["point"] = json!(d.point);
        v["orderBackendId"] = json!(d.backend_id);
        v["submittedDate"] = json!(d.submitted_date.map(|x| x.to_string()));
        if let Some(last) = d.last_check {
            v["lastCheck"] = json!(last.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        }
        let next = d
            .next_check
            .unwrap_or_else(|| Utc::now() + next_check_interval);
        v["nextCheck"] = json!(next.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    }
    v
}

fn domain_json(s: &State, d: &SimDomain) -> Value {
    let all_active = d.delegations.iter().all(|g| g.status == "ACTIVE");
    let mut v = json!({
        "id": d.id,
        "name": d.name,
        "delegationStatus": if all_active { "ACTIVE" } else { "REQUESTED" },
        "state": if d.active { "ACTIVE" } else { "SUSPENDED" },
        "delegations": d.delegations.iter().map(|g| json!({
            "orgId": g.org_id, "certTypes": g.cert_types,
            "domainCertificateRequestPrivileges": g.privileges, "status": g.status,
        })).collect::<Vec<_>>(),
        "ctLogMonitoring": d.ct,
    });
    if let Some(desc) = &d.description {
        v["description"] = json!(desc);
    }
    if s.dcv_enabled {
        let dcv = inherited_dcv(s, d.id);
        v["validationStatus"] = json!(dcv.status);
        if let Some(m) = dcv.method {
            v["validationMethod"] = json!(m);
        }
        v["dcvValidation"] = json!(dcv.validation_date.map(|x| x.to_string()));
        v["dcvExpiration"] = json!(dcv.expiration_date.map(|x| x.to_string()));
    }
    v
}

// ---------------------------------------------------------------------------------------------
// DCV checks

async fn dcv_checker(state: Arc<Mutex<State>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => run_dcv_checks(&mut state.lock().expect("simulator state poisoned"), false),
        }
    }
}

/// Checks submitted orders whose announced `nextCheck` has come (all of them with `force`).
fn run_dcv_checks(s: &mut State, force: bool) {
    let now = Utc::now();
    let interval = s.next_check_interval;
    let published = &s.published;
    let zone_dir = s.zone_dir.clone();
    for d in s.domains.values_mut() {
        if d.dcv.order_status != "SUBMITTED" {
            continue;
        }
        if !force && d.dcv.next_check.is_some_and(|next| now < next) {
            continue;
        }
        d.dcv.last_check = Some(now);
        d.dcv.next_check = Some(now + interval);
        let (Some(host), Some(point)) = (&d.dcv.host, &d.dcv.point) else {
            continue;
        };
        let mut values = published.get(&dns_key(host)).cloned().unwrap_or_default();
        if let Some(dir) = &zone_dir
            && let Ok(bytes) = std::fs::read(dir.join(dns_key(host)))
        {
            values.push(String::from_utf8_lossy(&bytes).into_owned());
        }
        let found = match d.dcv.order_mode {
            Some("CNAME") => values.iter().any(|v| dns_key(v) == dns_key(point)),
            _ => values.iter().any(|v| v == point),
        };
        if found {
            let today = now.date_naive();
            d.dcv.status = "VALIDATED";
            d.dcv.method = Some(if d.dcv.order_mode == Some("CNAME") {
                "CNAME_CSR_HASH"
            } else {
                "DNSTXT_RANDOM_VALUE"
            });
            d.dcv.validation_date = Some(today);
            d.dcv.expiration_date = today.checked_add_days(chrono::Days::new(365));
            d.dcv.order_status = "NOT_INITIATED";
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn find_by_name(s: &State, name: &str) -> Option<u64> {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    s.domains.values().find(|d| d.name == n).map(|d| d.id)
}

fn note_name(s: &mut State, name: &str) {
    *s.counters
        .names
        .entry(name.trim_end_matches('.').to_ascii_lowercase())
        .or_default() += 1;
}

fn dns_key(host: &str) -> String {
    host.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn valid_domain_name(name: &str) -> bool {
    let n = name.strip_prefix("*.").unwrap_or(name);
    let labels: Vec<&str> = n.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn json_response(status: u16, v: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).expect("valid status");
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn empty(status: u16) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::from_u16(status).expect("valid status");
    r
}

fn error(status: u16, code: i64, description: &str) -> Resp {
    json_response(status, &json!({"code": code, "description": description}))
}

/// An error body as the OpenAPI `ErrorResponse` allows it, with `items: null` when the
/// simulator is switched to that.
fn api_error(s: &State, status: u16, code: i64, description: &str) -> Resp {
    let mut v = json!({"code": code, "description": description});
    if s.items_null {
        v["items"] = Value::Null;
    }
    json_response(status, &v)
}

/// Can the admin see this domain? (§1a: results are filtered by the admin's role.)
fn visible(s: &State, d: &SimDomain) -> bool {
    s.admin_org
        .is_none_or(|org| d.delegations.iter().any(|g| g.org_id == org))
}

/// The registrable domain of `name` (Public Suffix List).
fn registrable(name: &str) -> String {
    psl::domain_str(name).unwrap_or(name).to_owned()
}

/// -723 for DCV on a name that is not high-level (§2c, §6e).
fn not_high_level(s: &State, id: u64) -> Option<Resp> {
    let name = &s.domains[&id].name;
    (registrable(name) != *name).then(|| {
        api_error(
            s,
            400,
            -723,
            &format!(
                "{name} is not a high-level domain. Only high-level domains can be validated."
            ),
        )
    })
}

/// A domain's DCV as SCM reports it: a subdomain inherits its registrable domain's
/// validation when that domain is in the inventory and validated (§6e).
fn inherited_dcv(s: &State, id: u64) -> Dcv {
    let d = &s.domains[&id];
    let parent = registrable(&d.name);
    if parent != d.name
        && let Some(pid) = find_by_name(s, &parent)
        && s.domains[&pid].dcv.status == "VALIDATED"
    {
        let p = &s.domains[&pid].dcv;
        return Dcv {
            status: p.status,
            method: p.method,
            validation_date: p.validation_date,
            expiration_date: p.expiration_date,
            ..Dcv::default()
        };
    }
    d.dcv.clone()
}

/// `POST /api/domain/v1/{id}/delegation/approve` `{"orgId":…}` (§4 table, §4c).
fn approve_delegation(s: &mut State, id: u64, body: &[u8]) -> Resp {
    if !s.domains.get(&id).is_some_and(|d| visible(s, d)) {
        return api_error(s, 404, -1, "Entity not found.");
    }
    let Some(org) = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("orgId").and_then(Value::as_u64))
    else {
        return api_error(s, 400, -7, "orgId is required but missing.");
    };
    if !s.admin_is_mrao {
        return api_error(
            s,
            400,
            -3,
            "You are not authorized to perform delegation approval.",
        );
    }
    let d = s.domains.get_mut(&id).expect("checked");
    match d.delegations.iter_mut().find(|g| g.org_id == org) {
        Some(g) if g.status == "REQUESTED" => {
            g.status = "ACTIVE";
            empty(200)
        }
        Some(_) => api_error(
            s,
            400,
            -705,
            "This operation cannot be performed as the delegation status is other than ‘‘Requested’’.",
        ),
        None => api_error(s, 400, -1601, "Field ''orgId'' has invalid value."),
    }
}

fn unknown_user() -> Resp {
    error(401, -16, "Unknown user")
}

fn oauth_refusal() -> Resp {
    json_response(
        401,
        &json!({"error": "unauthorized_client",
                "error_description": "Invalid client or Invalid client credentials"}),
    )
}
