//! A typed async client for the parts of the Sectigo Certificate Manager (SCM) REST API that
//! certline uses: the domain inventory, CT-log monitoring and Domain Control Validation (DCV).
//!
//! Shapes, paths and codes follow `shared/reference/sectigo-scm-api.md`. Three things shape
//! the design:
//!
//! * **Every failure is classified** ([`SectigoError`]) so the worker can decide without
//!   string matching: retry later (transient and undecodable responses), stop everything
//!   (credentials), or record Sectigo's `code`/`description` as final for that step.
//! * **Success bodies are parsed only where SCM sends one.** Create answers `201` with a
//!   `Location` header and no body; monitoring answers `200` with no body. Parsing those is
//!   the classic bug in other clients (python-cert_manager #26).
//! * **Secrets stay out of text.** Passwords and tokens live in [`Secret`]s and in header
//!   values marked sensitive; errors and logs carry paths, statuses and Sectigo's own
//!   messages only. Redirects are not followed, because the `password` header would be
//!   forwarded to wherever the redirect points.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION, RETRY_AFTER,
};
use reqwest::{Method, StatusCode};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::{Mutex, Semaphore};
use url::Url;

use crate::config::Secret;

/// SCM's largest page size for list endpoints.
pub const MAX_PAGE_SIZE: u32 = 200;

/// Sectigo error code for "Such domain already exists".
pub const CODE_DOMAIN_EXISTS: i64 = -700;
/// Sectigo error code for "The domain ''{0}'' does not exist." (DCV on an unknown name).
pub const CODE_DOMAIN_UNKNOWN: i64 = -727;

/// Which path version to use for DCV start/submit calls. Sectigo's 25.5 docs
/// (cert-manager.com, header auth) document them under `/api/dcv/v1`, the OpenAPI spec of the
/// OAuth2 admin host only under `/api/dcv/v2`. Status always uses v2, which both document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DcvApiVersion {
    /// `/api/dcv/v1/validation/...`
    V1,
    /// `/api/dcv/v2/validation/...`
    V2,
}

impl DcvApiVersion {
    fn segment(self) -> &'static str {
        match self {
            DcvApiVersion::V1 => "v1",
            DcvApiVersion::V2 => "v2",
        }
    }
}

/// The credentials the client presents.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// Legacy admin login: `login`, `password`, `customerUri` headers on every request.
    Headers {
        /// Admin login name.
        login: String,
        /// Admin password.
        password: Secret,
        /// Customer URI (e.g. `sunet`).
        customer_uri: String,
    },
    /// OAuth2 client credentials; the client fetches and caches a bearer token.
    OAuth2 {
        /// Token endpoint for the form POST.
        token_url: Url,
        /// API key client id.
        client_id: String,
        /// API key client secret.
        client_secret: Secret,
    },
}

/// Everything needed to build a [`SectigoClient`]; usually from
/// [`super::SectigoConfig::client_options`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// API root including `/api`, e.g. `https://cert-manager.com/api`.
    pub base_url: Url,
    /// Who the client is.
    pub credentials: Credentials,
    /// Whole-request timeout (connect, send, read the full body).
    pub request_timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Requests in flight at once.
    pub max_concurrency: usize,
    /// Request rate ceiling (token requests excluded).
    pub max_requests_per_second: f64,
    /// Path version for DCV start/submit.
    pub dcv_action_api: DcvApiVersion,
}

impl ClientOptions {
    /// Options with the documented defaults for everything but the endpoint and credentials.
    pub fn new(base_url: Url, credentials: Credentials) -> Self {
        let dcv_action_api = match credentials {
            Credentials::Headers { .. } => DcvApiVersion::V1,
            Credentials::OAuth2 { .. } => DcvApiVersion::V2,
        };
        ClientOptions {
            base_url,
            credentials,
            request_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            max_concurrency: 2,
            max_requests_per_second: 2.0,
            dcv_action_api,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// What kind of temporary failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransientKind {
    /// The request (or reading the response) took longer than the configured timeout.
    Timeout,
    /// No connection could be made.
    Connect,
    /// The connection broke: reset, closed before a full response, TLS failure mid-way.
    Network,
    /// SCM answered 5xx (or 408).
    Server,
    /// SCM answered 429.
    RateLimited,
}

impl fmt::Display for TransientKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransientKind::Timeout => "timeout",
            TransientKind::Connect => "cannot connect",
            TransientKind::Network => "connection broken",
            TransientKind::Server => "server error",
            TransientKind::RateLimited => "rate limited",
        })
    }
}

/// Every way a call to SCM can fail, sorted by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum SectigoError {
    /// Try again later (with backoff; at least `retry_after` if SCM said so).
    #[error("Sectigo is temporarily unavailable ({kind}{}): {detail}; retry later", status_suffix(*.status))]
    Transient {
        /// The kind of failure.
        kind: TransientKind,
        /// HTTP status, when SCM answered at all.
        status: Option<u16>,
        /// Parsed `Retry-After`, when present.
        retry_after: Option<Duration>,
        /// What happened, for the operator.
        detail: String,
    },
    /// SCM refused the credentials (401). Nothing else will work until an operator fixes
    /// `[sectigo.auth]` or the admin account/API key in SCM.
    #[error(
        "Sectigo rejected certline's credentials (HTTP 401{}); check [sectigo.auth] and that the admin or API key is active in SCM",
        code_description_suffix(*.code, .description.as_deref())
    )]
    Unauthorized {
        /// Sectigo's error code (e.g. -16), if the body had one.
        code: Option<i64>,
        /// Sectigo's description (e.g. "Unknown user"), if the body had one.
        description: Option<String>,
    },
    /// SCM refused this request (a 4xx other than 401/408/429). Final for this step; keep the
    /// code and description and show them.
    #[error("Sectigo refused the request (HTTP {status}{}): {description}", code_suffix(*.code))]
    Api {
        /// HTTP status.
        status: u16,
        /// Sectigo's (negative) error code, when the body carried one.
        code: Option<i64>,
        /// Sectigo's description, or a note that the body had none.
        description: String,
    },
    /// A successful status whose body is not what SCM documents (truncated or malformed
    /// JSON, a 201 without `Location`). Seen with broken proxies and interrupted responses;
    /// retryable.
    #[error("Sectigo's response to {what} could not be understood ({detail}); retry later")]
    Decode {
        /// Which call.
        what: &'static str,
        /// The parser's complaint (position, not content).
        detail: String,
    },
    /// The client could not be built (TLS backend, invalid header value in the login).
    #[error("cannot set up the Sectigo client: {0}")]
    Setup(String),
}

fn status_suffix(status: Option<u16>) -> String {
    status.map(|s| format!(", HTTP {s}")).unwrap_or_default()
}

fn code_suffix(code: Option<i64>) -> String {
    code.map(|c| format!(", code {c}")).unwrap_or_default()
}

fn code_description_suffix(code: Option<i64>, description: Option<&str>) -> String {
    match (code, description) {
        (Some(c), Some(d)) => format!(", code {c}: {d}"),
        (Some(c), None) => format!(", code {c}"),
        (None, Some(d)) => format!(": {d}"),
        (None, None) => String::new(),
    }
}

impl SectigoError {
    /// Whether the same request may succeed later without anyone changing anything:
    /// transient failures and undecodable responses.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SectigoError::Transient { .. } | SectigoError::Decode { .. }
        )
    }

    /// The server's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SectigoError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Sectigo's error code, if the response carried one.
    pub fn code(&self) -> Option<i64> {
        match self {
            SectigoError::Api { code, .. } | SectigoError::Unauthorized { code, .. } => *code,
            _ => None,
        }
    }

    /// "Such domain already exists" (-700): for a create, the desired state is reached.
    pub fn is_already_exists(&self) -> bool {
        matches!(
            self,
            SectigoError::Api {
                code: Some(CODE_DOMAIN_EXISTS),
                ..
            }
        )
    }

    /// "The domain does not exist" (-727), the answer of DCV calls for names SCM lacks.
    pub fn is_unknown_domain(&self) -> bool {
        matches!(
            self,
            SectigoError::Api {
                code: Some(CODE_DOMAIN_UNKNOWN),
                ..
            }
        )
    }
}

/// Sectigo's error body: `{"code":-16,"description":"Unknown user"}`; the OpenAPI spec adds
/// optional `items` and `details`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ApiErrorBody {
    /// Negative error code.
    #[serde(default)]
    pub code: Option<i64>,
    /// Human-readable description.
    #[serde(default)]
    pub description: Option<String>,
    /// Extra items (OpenAPI only).
    #[serde(default)]
    pub items: Vec<String>,
    /// Extra details (OpenAPI only).
    #[serde(default)]
    pub details: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Status vocabularies

/// Upper-cases and turns spaces/hyphens into underscores, so the OpenAPI display names
/// ("Not validated") match the wire values (`NOT_VALIDATED`).
fn normalize_enum(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| match c {
            ' ' | '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $wire:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
            /// A value this client does not know yet, kept verbatim so nothing is lost.
            Other(String),
        }

        impl $name {
            /// The wire value.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $wire,)+
                    $name::Other(s) => s,
                }
            }

            /// Parses a wire value or a display-name alias; anything else becomes `Other`.
            pub fn parse(s: &str) -> Self {
                match normalize_enum(s).as_str() {
                    $($wire => $name::$variant,)+
                    _ => $name::Other(s.to_string()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Ok($name::parse(&s))
            }
        }
    };
}

wire_enum! {
    /// DCV validation status (`status`, `dcvStatus`, domain `validationStatus`).
    ValidationStatus {
        /// `NOT_VALIDATED` ("Not validated").
        NotValidated = "NOT_VALIDATED",
        /// `VALIDATED` ("Validated").
        Validated = "VALIDATED",
        /// `EXPIRED` ("Expired").
        Expired = "EXPIRED",
    }
}

wire_enum! {
    /// DCV order status (`orderStatus`, `dcvOrderStatus`).
    OrderStatus {
        /// `NOT_INITIATED`.
        NotInitiated = "NOT_INITIATED",
        /// `AWAITING_SUBMISSION` (inferred from the display name "Awaiting submission").
        AwaitingSubmission = "AWAITING_SUBMISSION",
        /// `SUBMITTED`: SCM checks the proof on its schedule.
        Submitted = "SUBMITTED",
        /// `REJECTED` (inferred from the display name "Rejected").
        Rejected = "REJECTED",
    }
}

wire_enum! {
    /// DCV order mode (`orderMode`, `dcvOrderMethod`).
    DcvMode {
        /// E-mail to a domain contact.
        Email = "EMAIL",
        /// DNS CNAME record.
        Cname = "CNAME",
        /// File over HTTP.
        Http = "HTTP",
        /// File over HTTPS.
        Https = "HTTPS",
        /// DNS connector / automatic.
        Auto = "AUTO",
        /// DNS TXT record.
        Txt = "TXT",
    }
}

wire_enum! {
    /// Status of a domain's delegation to an organization.
    DelegationStatus {
        /// In effect.
        Active = "ACTIVE",
        /// Waiting for an MRAO to approve.
        Requested = "REQUESTED",
        /// Waiting for this admin (seen in a client library, not in Sectigo's docs).
        AwaitingMe = "AWAITING_ME",
    }
}

wire_enum! {
    /// Whether the domain is active in SCM.
    DomainState {
        /// Usable for certificates.
        Active = "ACTIVE",
        /// Suspended by an administrator.
        Suspended = "SUSPENDED",
    }
}

// ---------------------------------------------------------------------------------------------
// Dates

/// Parses SCM's `yyyy-MM-dd`; a date-time (the OpenAPI spec claims `date-time`) is cut to its
/// date part.
fn parse_scm_date(s: &str) -> Option<NaiveDate> {
    let s = s.trim();
    let head = s.get(..10)?;
    if s.len() > 10 && !matches!(s.as_bytes()[10], b'T' | b't' | b' ') {
        return None;
    }
    NaiveDate::parse_from_str(head, "%Y-%m-%d").ok()
}

fn de_date_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NaiveDate>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => parse_scm_date(&s)
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("invalid date {s:?}, expected yyyy-MM-dd"))),
    }
}

fn de_datetime_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => DateTime::parse_from_rfc3339(s.trim())
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| D::Error::custom(format!("invalid timestamp {s:?}, expected RFC 3339"))),
    }
}

fn de_vec_or_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// Domain types

/// One row of the domain list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRef {
    /// SCM's numeric id.
    pub id: u64,
    /// The name as SCM stores it (`*.example.com` is a separate domain).
    pub name: String,
}

/// One page of the domain list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainPage {
    /// The rows.
    pub items: Vec<DomainRef>,
    /// `X-Total-Count`, the number of rows matching the filter, when SCM sent it.
    pub total: Option<u64>,
}

/// CT-log monitoring of a domain; also the body of `PUT /domain/v1/{id}/monitoring`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CtLogMonitoring {
    /// Whether monitoring is on.
    #[serde(default)]
    pub enabled: bool,
    /// Whether subdomains are covered.
    #[serde(default)]
    pub include_subdomains: bool,
    /// Bucket (UUID) new certificates are filed into; required when enabling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_id: Option<String>,
}

/// A delegation as SCM reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delegation {
    /// Organization or department id.
    pub org_id: u64,
    /// `SSL`, `SMIME`, `CodeSign`.
    #[serde(default, deserialize_with = "de_vec_or_null")]
    pub cert_types: Vec<String>,
    /// `DOMAIN`, `SUBDOMAIN`, ... (SCM 25.5 and later).
    #[serde(default, deserialize_with = "de_vec_or_null")]
    pub domain_certificate_request_privileges: Vec<String>,
    /// `ACTIVE` or `REQUESTED`.
    #[serde(default)]
    pub status: Option<DelegationStatus>,
}

/// `GET /api/domain/v1/{id}`. Everything but `id` and `name` is optional: DCV fields appear
/// only when DCV is enabled for the customer, delegations are filtered by the admin's rights,
/// and older SCM versions omit newer fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainInfo {
    /// SCM's numeric id.
    pub id: u64,
    /// Domain name.
    pub name: String,
    /// Overall delegation status.
    #[serde(default)]
    pub delegation_status: Option<DelegationStatus>,
    /// `ACTIVE` or `SUSPENDED`.
    #[serde(default)]
    pub state: Option<DomainState>,
    /// DCV status.
    #[serde(default)]
    pub validation_status: Option<ValidationStatus>,
    /// DCV method, an open vocabulary (`EMAIL`, `CNAME_CSR_HASH`, ...).
    #[serde(default)]
    pub validation_method: Option<String>,
    /// When DCV last succeeded.
    #[serde(default, deserialize_with = "de_date_opt")]
    pub dcv_validation: Option<NaiveDate>,
    /// When DCV expires.
    #[serde(default, deserialize_with = "de_date_opt")]
    pub dcv_expiration: Option<NaiveDate>,
    /// Delegations visible to this admin.
    #[serde(default, deserialize_with = "de_vec_or_null")]
    pub delegations: Vec<Delegation>,
    /// CT-log monitoring settings.
    #[serde(default)]
    pub ct_log_monitoring: Option<CtLogMonitoring>,
}

/// A delegation in a create request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewDelegation {
    /// Organization or department id (at least 1).
    pub org_id: u64,
    /// At least one of `SSL`, `SMIME`, `CodeSign`.
    pub cert_types: Vec<String>,
    /// Left out when empty, so SCM applies its default.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub domain_certificate_request_privileges: Vec<String>,
}

/// Body of `POST /api/domain/v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateDomainRequest {
    /// The domain name (4..255 characters).
    pub name: String,
    /// Free text shown in SCM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `false` creates the domain suspended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// CT-log monitoring from the start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ct_log_monitoring: Option<CtLogMonitoring>,
    /// At least one delegation, or SCM answers -709.
    pub delegations: Vec<NewDelegation>,
}

/// What a create achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// Created; the id comes from the `Location` header.
    Created {
        /// The new domain's id.
        id: u64,
    },
    /// SCM already has the domain (-700), e.g. because an earlier attempt succeeded but its
    /// answer was lost. Look it up by name to get the id.
    AlreadyExists,
}

// ---------------------------------------------------------------------------------------------
// DCV types

/// `POST /api/dcv/v2/validation/status` (and the deprecated v1). All fields are optional;
/// the last three appear only for submitted orders.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DcvStatus {
    /// Validation status.
    #[serde(default)]
    pub status: Option<ValidationStatus>,
    /// When DCV last succeeded.
    #[serde(default, deserialize_with = "de_date_opt")]
    pub validation_date: Option<NaiveDate>,
    /// When DCV expires.
    #[serde(default, deserialize_with = "de_date_opt")]
    pub expiration_date: Option<NaiveDate>,
    /// Order status.
    #[serde(default)]
    pub order_status: Option<OrderStatus>,
    /// Order mode.
    #[serde(default)]
    pub order_mode: Option<DcvMode>,
    /// HTTP(S) validation file URL.
    #[serde(default)]
    pub url: Option<String>,
    /// HTTP(S) file, first line.
    #[serde(default)]
    pub first_line: Option<String>,
    /// HTTP(S) file, second line.
    #[serde(default)]
    pub second_line: Option<String>,
    /// DNS record name (CNAME/TXT).
    #[serde(default)]
    pub host: Option<String>,
    /// DNS record value (CNAME/TXT).
    #[serde(default)]
    pub point: Option<String>,
    /// E-mail address validation was sent to.
    #[serde(default)]
    pub validation_email: Option<String>,
    /// E-mail validation reference.
    #[serde(default)]
    pub email_validation_reference_number: Option<String>,
    /// Sectigo's order id.
    #[serde(default)]
    pub order_backend_id: Option<String>,
    /// When the order was submitted.
    #[serde(default, deserialize_with = "de_date_opt")]
    pub submitted_date: Option<NaiveDate>,
    /// SCM's last check of the proof.
    #[serde(default, deserialize_with = "de_datetime_opt")]
    pub last_check: Option<DateTime<Utc>>,
    /// SCM's next check of the proof.
    #[serde(default, deserialize_with = "de_datetime_opt")]
    pub next_check: Option<DateTime<Utc>>,
}

/// One row of `GET /api/dcv/v2/validation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DcvListEntry {
    /// Domain name.
    pub domain: String,
    /// Validation status.
    #[serde(default)]
    pub dcv_status: Option<ValidationStatus>,
    /// Method of the last validation (open vocabulary; may be null).
    #[serde(default)]
    pub dcv_method: Option<String>,
    /// Order status.
    #[serde(default)]
    pub dcv_order_status: Option<OrderStatus>,
    /// Order method.
    #[serde(default)]
    pub dcv_order_method: Option<DcvMode>,
    /// When DCV expires.
    #[serde(default, deserialize_with = "de_date_opt")]
    pub expiration_date: Option<NaiveDate>,
}

/// One page of the DCV list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcvPage {
    /// The rows.
    pub items: Vec<DcvListEntry>,
    /// `X-Total-Count`.
    pub total: Option<u64>,
}

/// Answer of "start CNAME": publish `host CNAME point`. Both carry a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CnameChallenge {
    /// Record name, `_<32 hex>.<domain>.`.
    pub host: String,
    /// Record target, `<32 hex>.<32 hex>.sectigo.com.`.
    pub point: String,
}

/// Answer of "submit" (CNAME, HTTP, HTTPS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DcvSubmitResult {
    /// Validation status at submission time.
    #[serde(default)]
    pub status: Option<ValidationStatus>,
    /// Order status, normally `SUBMITTED`.
    #[serde(default)]
    pub order_status: Option<OrderStatus>,
    /// Free text.
    #[serde(default)]
    pub message: Option<String>,
    /// Sectigo's order id.
    #[serde(default)]
    pub order_backend_id: Option<String>,
}

/// Answer of "submit TXT": publish `host TXT "point"`. `point` is arbitrary printable text
/// (it can contain backslashes and backticks), so quote it when writing DNS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TxtSubmitResult {
    /// Validation status at submission time.
    #[serde(default)]
    pub status: Option<ValidationStatus>,
    /// Order status, normally `SUBMITTED`.
    #[serde(default)]
    pub order_status: Option<OrderStatus>,
    /// Free text.
    #[serde(default)]
    pub message: Option<String>,
    /// Sectigo's order id.
    #[serde(default)]
    pub order_backend_id: Option<String>,
    /// Record name, `_pki-validation.<domain>.`.
    pub host: String,
    /// Record value.
    pub point: String,
}

#[derive(Serialize)]
struct DomainBody<'a> {
    domain: &'a str,
}

// ---------------------------------------------------------------------------------------------
// The client

/// The SCM client. Cheap to clone; clones share the connection pool, the token cache and
/// the concurrency and rate limits.
#[derive(Clone)]
pub struct SectigoClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    auth: AuthState,
    permits: Semaphore,
    limiter: DefaultDirectRateLimiter,
    dcv_action_api: DcvApiVersion,
}

enum AuthState {
    Headers(HeaderMap),
    OAuth2 {
        token_url: Url,
        client_id: String,
        client_secret: Secret,
        cache: Mutex<TokenCache>,
    },
}

#[derive(Default)]
struct TokenCache {
    current: Option<CachedToken>,
    generation: u64,
}

struct CachedToken {
    header: HeaderValue,
    refresh_at: Instant,
    generation: u64,
}

impl fmt::Debug for SectigoClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match &self.inner.auth {
            AuthState::Headers(_) => "headers",
            AuthState::OAuth2 { .. } => "oauth2",
        };
        f.debug_struct("SectigoClient")
            .field("base_url", &self.inner.base.as_str())
            .field("auth", &mode)
            .finish_non_exhaustive()
    }
}

/// What a successful exchange returned, before any parsing.
struct Reply {
    headers: HeaderMap,
    body: bytes::Bytes,
}

impl SectigoClient {
    /// Builds a client. Makes no request yet (an OAuth2 token is fetched on first use).
    pub fn new(options: ClientOptions) -> Result<Self, SectigoError> {
        let mut base = options.base_url;
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let mut defaults = HeaderMap::new();
        defaults.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let http = reqwest::Client::builder()
            .default_headers(defaults)
            .timeout(options.request_timeout)
            .connect_timeout(options.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("certline/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SectigoError::Setup(error_chain(&e)))?;
        let auth = match options.credentials {
            Credentials::Headers {
                login,
                password,
                customer_uri,
            } => {
                let mut h = HeaderMap::new();
                h.insert(
                    HeaderName::from_static("login"),
                    header_value("login", &login, false)?,
                );
                h.insert(
                    HeaderName::from_static("password"),
                    header_value("password", password.expose(), true)?,
                );
                h.insert(
                    HeaderName::from_static("customeruri"),
                    header_value("customerUri", &customer_uri, false)?,
                );
                AuthState::Headers(h)
            }
            Credentials::OAuth2 {
                token_url,
                client_id,
                client_secret,
            } => AuthState::OAuth2 {
                token_url,
                client_id,
                client_secret,
                cache: Mutex::new(TokenCache::default()),
            },
        };
        let rps = if options.max_requests_per_second.is_finite()
            && options.max_requests_per_second > 0.0
        {
            options.max_requests_per_second
        } else {
            return Err(SectigoError::Setup(
                "max_requests_per_second must be a positive number".into(),
            ));
        };
        let quota = Quota::with_period(Duration::from_secs_f64(1.0 / rps))
            .ok_or_else(|| SectigoError::Setup("max_requests_per_second is too large".into()))?
            .allow_burst(NonZeroU32::MIN);
        Ok(SectigoClient {
            inner: Arc::new(Inner {
                http,
                base,
                auth,
                permits: Semaphore::new(options.max_concurrency.max(1)),
                limiter: RateLimiter::direct(quota),
                dcv_action_api: options.dcv_action_api,
            }),
        })
    }

    /// One page of `GET /api/domain/v1`, optionally filtered by `name` (which SCM may match
    /// as a substring). `size` is capped at [`MAX_PAGE_SIZE`].
    pub async fn list_domains_page(
        &self,
        name: Option<&str>,
        position: u64,
        size: u32,
    ) -> Result<DomainPage, SectigoError> {
        let size = size.clamp(1, MAX_PAGE_SIZE);
        let mut query = Vec::with_capacity(3);
        if let Some(n) = name {
            query.push(("name", n.to_string()));
        }
        query.push(("size", size.to_string()));
        query.push(("position", position.to_string()));
        let reply = self.execute(Method::GET, "domain/v1", &query, None).await?;
        Ok(DomainPage {
            total: total_count(&reply.headers),
            items: decode(&reply, "the domain list")?,
        })
    }

    /// All domains whose name equals `name` (case-insensitive, trailing dot ignored), reading
    /// every page of the name-filtered list. SCM's `name` filter is not documented as exact,
    /// so equality is checked here. Usually zero or one result.
    pub async fn find_domains_by_name(&self, name: &str) -> Result<Vec<DomainRef>, SectigoError> {
        // SCM stores names without the trailing dot; a filter with one would match nothing.
        let wanted = comparable_name(name);
        let name = wanted.as_str();
        let mut found = Vec::new();
        let mut position = 0u64;
        loop {
            let page = self
                .list_domains_page(Some(name), position, MAX_PAGE_SIZE)
                .await?;
            let n = page.items.len() as u64;
            found.extend(
                page.items
                    .into_iter()
                    .filter(|d| comparable_name(&d.name) == wanted),
            );
            position += n;
            let short = n < u64::from(MAX_PAGE_SIZE);
            let past_total = page.total.is_some_and(|t| position >= t);
            if short || past_total {
                return Ok(found);
            }
        }
    }

    /// The domain named exactly `name`, if SCM has it.
    pub async fn find_domain(&self, name: &str) -> Result<Option<DomainRef>, SectigoError> {
        Ok(self.find_domains_by_name(name).await?.into_iter().next())
    }

    /// `GET /api/domain/v1/{id}`.
    pub async fn domain_info(&self, id: u64) -> Result<DomainInfo, SectigoError> {
        let reply = self
            .execute(Method::GET, &format!("domain/v1/{id}"), &[], None)
            .await?;
        decode(&reply, "the domain details")
    }

    /// `POST /api/domain/v1`. "Already exists" (-700) is an outcome, not an error.
    pub async fn create_domain(
        &self,
        request: &CreateDomainRequest,
    ) -> Result<CreateOutcome, SectigoError> {
        match self
            .execute(Method::POST, "domain/v1", &[], Some(to_json(request)?))
            .await
        {
            Ok(reply) => Ok(CreateOutcome::Created {
                id: id_from_location(&reply.headers)?,
            }),
            Err(e) if e.is_already_exists() => Ok(CreateOutcome::AlreadyExists),
            Err(e) => Err(e),
        }
    }

    /// `PUT /api/domain/v1/{id}/monitoring`: switch CT-log monitoring on or off.
    pub async fn set_ct_monitoring(
        &self,
        id: u64,
        monitoring: &CtLogMonitoring,
    ) -> Result<(), SectigoError> {
        self.execute(
            Method::PUT,
            &format!("domain/v1/{id}/monitoring"),
            &[],
            Some(to_json(monitoring)?),
        )
        .await
        .map(drop)
    }

    /// `POST /api/dcv/v2/validation/status`.
    pub async fn dcv_status(&self, domain: &str) -> Result<DcvStatus, SectigoError> {
        let reply = self
            .execute(
                Method::POST,
                "dcv/v2/validation/status",
                &[],
                Some(to_json(&DomainBody { domain })?),
            )
            .await?;
        decode(&reply, "the DCV status")
    }

    /// One page of `GET /api/dcv/v2/validation`: the DCV state of up to 200 domains in one
    /// call, cheaper than one status call per domain.
    pub async fn list_dcv_page(&self, position: u64, size: u32) -> Result<DcvPage, SectigoError> {
        let size = size.clamp(1, MAX_PAGE_SIZE);
        let query = [
            ("size", size.to_string()),
            ("position", position.to_string()),
        ];
        let reply = self
            .execute(Method::GET, "dcv/v2/validation", &query, None)
            .await?;
        Ok(DcvPage {
            total: total_count(&reply.headers),
            items: decode(&reply, "the DCV list")?,
        })
    }

    /// Start CNAME validation: returns the record to publish before [`Self::submit_cname`].
    pub async fn start_cname(&self, domain: &str) -> Result<CnameChallenge, SectigoError> {
        let reply = self.dcv_action("start/domain/cname", domain).await?;
        decode(&reply, "DCV start (CNAME)")
    }

    /// Submit CNAME validation: SCM checks the record asynchronously afterwards.
    pub async fn submit_cname(&self, domain: &str) -> Result<DcvSubmitResult, SectigoError> {
        let reply = self.dcv_action("submit/domain/cname", domain).await?;
        decode(&reply, "DCV submit (CNAME)")
    }

    /// Submit TXT validation (there is no start step): returns the record to publish.
    pub async fn submit_txt(&self, domain: &str) -> Result<TxtSubmitResult, SectigoError> {
        let reply = self.dcv_action("submit/domain/txt", domain).await?;
        decode(&reply, "DCV submit (TXT)")
    }

    async fn dcv_action(&self, action: &str, domain: &str) -> Result<Reply, SectigoError> {
        let path = format!(
            "dcv/{}/validation/{action}",
            self.inner.dcv_action_api.segment()
        );
        self.execute(
            Method::POST,
            &path,
            &[],
            Some(to_json(&DomainBody { domain })?),
        )
        .await
    }

    /// Sends one request under the concurrency and rate limits, with authentication. With
    /// OAuth2, a 401 drops the cached token and the request is retried once with a new one
    /// (tokens can be revoked before they expire).
    async fn execute(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<Reply, SectigoError> {
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .map_err(|_| SectigoError::Setup("client is shutting down".into()))?;
        let mut url = self
            .inner
            .base
            .join(path)
            .map_err(|e| SectigoError::Setup(format!("cannot build URL for {path}: {e}")))?;
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        let mut retried_auth = false;
        loop {
            self.inner.limiter.until_ready().await;
            let (auth_headers, token_generation) = self.auth_headers().await?;
            let mut request = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .headers(auth_headers);
            if let Some(b) = &body {
                request = request
                    .header(CONTENT_TYPE, "application/json;charset=utf-8")
                    .body(b.clone());
            }
            let started = Instant::now();
            let result = read_response(request.send().await).await;
            let elapsed_ms = started.elapsed().as_millis() as u64;
            let (status, headers, bytes) = match result {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(%method, path = url.path(), elapsed_ms, error = %e, "sectigo request failed");
                    return Err(e);
                }
            };
            tracing::debug!(%method, path = url.path(), status = status.as_u16(), elapsed_ms, "sectigo response");
            if status == StatusCode::UNAUTHORIZED
                && let Some(generation) = token_generation
                && !retried_auth
            {
                tracing::warn!(
                    "Sectigo refused the OAuth2 access token; fetching a new one and retrying once"
                );
                self.forget_token(generation).await;
                retried_auth = true;
                continue;
            }
            if status.is_success() {
                return Ok(Reply {
                    headers,
                    body: bytes,
                });
            }
            let err = classify_failure(status, &headers, &bytes);
            tracing::debug!(%method, path = url.path(), error = %err, "sectigo request refused");
            return Err(err);
        }
    }

    /// Headers that authenticate one request, and for OAuth2 the generation of the token
    /// used, so a 401 invalidates exactly that token and not a newer one.
    async fn auth_headers(&self) -> Result<(HeaderMap, Option<u64>), SectigoError> {
        match &self.inner.auth {
            AuthState::Headers(h) => Ok((h.clone(), None)),
            AuthState::OAuth2 {
                token_url,
                client_id,
                client_secret,
                cache,
            } => {
                let mut cache = cache.lock().await;
                if let Some(t) = &cache.current
                    && Instant::now() < t.refresh_at
                {
                    let mut h = HeaderMap::new();
                    h.insert(AUTHORIZATION, t.header.clone());
                    return Ok((h, Some(t.generation)));
                }
                let (token, lifetime) = self
                    .fetch_token(token_url, client_id, client_secret)
                    .await?;
                // Refresh a little before SCM would refuse the token: a fifth of its life,
                // at most 30 s, early.
                let lead = (lifetime / 5).min(Duration::from_secs(30));
                let mut header =
                    header_value("access token", &format!("Bearer {}", token.expose()), true)?;
                header.set_sensitive(true);
                cache.generation += 1;
                let generation = cache.generation;
                cache.current = Some(CachedToken {
                    header: header.clone(),
                    refresh_at: Instant::now() + lifetime.saturating_sub(lead),
                    generation,
                });
                tracing::debug!(
                    expires_in_secs = lifetime.as_secs(),
                    "obtained a Sectigo OAuth2 access token"
                );
                let mut h = HeaderMap::new();
                h.insert(AUTHORIZATION, header);
                Ok((h, Some(generation)))
            }
        }
    }

    async fn forget_token(&self, generation: u64) {
        if let AuthState::OAuth2 { cache, .. } = &self.inner.auth {
            let mut cache = cache.lock().await;
            if cache.current.as_ref().map(|t| t.generation) == Some(generation) {
                cache.current = None;
            }
        }
    }

    async fn fetch_token(
        &self,
        token_url: &Url,
        client_id: &str,
        client_secret: &Secret,
    ) -> Result<(Secret, Duration), SectigoError> {
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", client_id)
            .append_pair("client_secret", client_secret.expose())
            .finish();
        let request = self
            .inner
            .http
            .post(token_url.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form);
        let (status, headers, body) = read_response(request.send().await).await?;
        tracing::debug!(status = status.as_u16(), "sectigo token endpoint answered");
        if status.is_success() {
            #[derive(Deserialize)]
            struct TokenResponse {
                access_token: String,
                #[serde(default)]
                expires_in: Option<u64>,
            }
            // The body holds the token: report where parsing failed, never serde's text,
            // which can quote the input.
            let t: TokenResponse =
                serde_json::from_slice(&body).map_err(|e| SectigoError::Decode {
                    what: "the OAuth2 token request",
                    detail: format!(
                        "expected JSON with access_token and expires_in; {:?} error at line {} column {}",
                        e.classify(),
                        e.line(),
                        e.column()
                    ),
                })?;
            if t.access_token.is_empty() {
                return Err(SectigoError::Decode {
                    what: "the OAuth2 token request",
                    detail: "empty access_token".into(),
                });
            }
            // Without expires_in, assume a short life rather than caching forever.
            let lifetime = Duration::from_secs(t.expires_in.unwrap_or(60));
            return Ok((Secret::new(t.access_token), lifetime));
        }
        match status.as_u16() {
            400 | 401 | 403 => {
                #[derive(Deserialize)]
                struct OAuthError {
                    #[serde(default)]
                    error: Option<String>,
                    #[serde(default)]
                    error_description: Option<String>,
                }
                let parsed: Option<OAuthError> = serde_json::from_slice(&body).ok();
                let text = parsed
                    .map(|e| {
                        [e.error, e.error_description]
                            .into_iter()
                            .flatten()
                            .collect::<Vec<_>>()
                            .join(": ")
                    })
                    .filter(|s| !s.is_empty())
                    .map(|s| truncate(&s, 200));
                Err(SectigoError::Unauthorized {
                    code: None,
                    description: Some(format!(
                        "token endpoint refused the client credentials (HTTP {}){}",
                        status.as_u16(),
                        text.map(|t| format!(": {t}")).unwrap_or_default()
                    )),
                })
            }
            _ => Err(classify_failure(status, &headers, &body)),
        }
    }
}

fn header_value(what: &str, value: &str, sensitive: bool) -> Result<HeaderValue, SectigoError> {
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        SectigoError::Setup(format!(
            "the {what} contains characters that cannot be sent in an HTTP header"
        ))
    })?;
    v.set_sensitive(sensitive);
    Ok(v)
}

async fn read_response(
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Result<(StatusCode, HeaderMap, bytes::Bytes), SectigoError> {
    let response = sent.map_err(|e| transport_error(&e))?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(|e| transport_error(&e))?;
    Ok((status, headers, body))
}

fn transport_error(e: &reqwest::Error) -> SectigoError {
    let kind = if e.is_timeout() {
        TransientKind::Timeout
    } else if e.is_connect() {
        TransientKind::Connect
    } else {
        TransientKind::Network
    };
    SectigoError::Transient {
        kind,
        status: None,
        retry_after: None,
        detail: error_chain(e),
    }
}

/// The error and its causes on one line ("error sending request ...: connection closed
/// before message completed"), since the top-level reqwest message alone hides the cause.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

fn classify_failure(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> SectigoError {
    let parsed: Option<ApiErrorBody> = serde_json::from_slice(body).ok();
    let code = parsed.as_ref().and_then(|p| p.code);
    let description = parsed
        .as_ref()
        .and_then(|p| p.description.clone())
        .map(|d| truncate(&d, 500));
    match status.as_u16() {
        401 => SectigoError::Unauthorized { code, description },
        408 | 429 | 500..=599 => SectigoError::Transient {
            kind: if status == StatusCode::TOO_MANY_REQUESTS {
                TransientKind::RateLimited
            } else {
                TransientKind::Server
            },
            status: Some(status.as_u16()),
            retry_after: retry_after(headers),
            detail: match (code, description) {
                (Some(c), Some(d)) => format!("code {c}: {d}"),
                (None, Some(d)) => d,
                _ => format!("HTTP {}", status.canonical_reason().unwrap_or("error")),
            },
        },
        s => SectigoError::Api {
            status: s,
            code,
            description: description.unwrap_or_else(|| {
                // Never echo a non-JSON body: it could be anything, e.g. a proxy page.
                let ctype = headers
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("no content type");
                format!(
                    "no Sectigo error body ({} bytes, {})",
                    body.len(),
                    truncate(ctype, 60)
                )
            }),
        },
    }
}

/// `Retry-After` as delta-seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    Some((when - Utc::now()).to_std().unwrap_or(Duration::ZERO))
}

fn total_count(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("x-total-count")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The id at the end of `Location: https://cert-manager.com/api/domain/v1/396`.
fn id_from_location(headers: &HeaderMap) -> Result<u64, SectigoError> {
    let bad = |detail: &str| SectigoError::Decode {
        what: "the domain creation",
        detail: detail.to_string(),
    };
    let location = headers
        .get(LOCATION)
        .ok_or_else(|| bad("201 Created without a Location header"))?
        .to_str()
        .map_err(|_| bad("Location header is not text"))?;
    let path = location.split(['?', '#']).next().unwrap_or_default();
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .and_then(|last| last.parse::<u64>().ok())
        .ok_or_else(|| bad("Location header does not end in a domain id"))
}

fn decode<T: DeserializeOwned>(reply: &Reply, what: &'static str) -> Result<T, SectigoError> {
    if reply.body.iter().all(u8::is_ascii_whitespace) {
        return Err(SectigoError::Decode {
            what,
            detail: "empty body where JSON was expected".into(),
        });
    }
    serde_json::from_slice(&reply.body).map_err(|e| SectigoError::Decode {
        what,
        detail: truncate(&e.to_string(), 300),
    })
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, SectigoError> {
    serde_json::to_vec(value)
        .map_err(|e| SectigoError::Setup(format!("cannot encode request: {e}")))
}

fn comparable_name(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max_chars).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_accept_wire_values_display_names_and_unknowns() {
        assert_eq!(
            ValidationStatus::parse("NOT_VALIDATED"),
            ValidationStatus::NotValidated
        );
        assert_eq!(
            ValidationStatus::parse("Not validated"),
            ValidationStatus::NotValidated
        );
        assert_eq!(
            ValidationStatus::parse("Validated"),
            ValidationStatus::Validated
        );
        assert_eq!(
            ValidationStatus::parse("Action Required"),
            ValidationStatus::Other("Action Required".into())
        );
        assert_eq!(
            OrderStatus::parse("Awaiting submission"),
            OrderStatus::AwaitingSubmission
        );
        assert_eq!(DcvMode::parse("txt"), DcvMode::Txt);
        let json = serde_json::to_string(&ValidationStatus::Other("NEW_THING".into())).unwrap();
        assert_eq!(json, "\"NEW_THING\"");
        assert_eq!(
            serde_json::to_string(&ValidationStatus::NotValidated).unwrap(),
            "\"NOT_VALIDATED\""
        );
    }

    #[test]
    fn dates_tolerate_null_empty_and_datetime() {
        #[derive(Deserialize)]
        struct D {
            #[serde(default, deserialize_with = "de_date_opt")]
            d: Option<NaiveDate>,
        }
        let p = |s: &str| serde_json::from_str::<D>(s).map(|d| d.d);
        assert_eq!(p(r#"{"d":null}"#).unwrap(), None);
        assert_eq!(p(r#"{}"#).unwrap(), None);
        assert_eq!(p(r#"{"d":""}"#).unwrap(), None);
        assert_eq!(
            p(r#"{"d":"2025-05-22"}"#).unwrap(),
            NaiveDate::from_ymd_opt(2025, 5, 22)
        );
        assert_eq!(
            p(r#"{"d":"2025-05-22T00:00:00.000Z"}"#).unwrap(),
            NaiveDate::from_ymd_opt(2025, 5, 22)
        );
        assert!(p(r#"{"d":"22/05/2025"}"#).is_err());
        assert!(p(r#"{"d":"2025-05-22x"}"#).is_err());
    }

    #[test]
    fn location_ids() {
        let mut h = HeaderMap::new();
        assert!(id_from_location(&h).is_err());
        h.insert(
            LOCATION,
            HeaderValue::from_static("https://cert-manager.com/api/domain/v1/396"),
        );
        assert_eq!(id_from_location(&h).unwrap(), 396);
        h.insert(LOCATION, HeaderValue::from_static("/api/domain/v1/7/"));
        assert_eq!(id_from_location(&h).unwrap(), 7);
        h.insert(
            LOCATION,
            HeaderValue::from_static("https://x/api/domain/v1/abc"),
        );
        assert!(matches!(
            id_from_location(&h),
            Err(SectigoError::Decode { .. })
        ));
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("17"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(17)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn failures_are_classified_by_status_and_body() {
        let h = HeaderMap::new();
        let e = classify_failure(
            StatusCode::BAD_REQUEST,
            &h,
            br#"{"code":-732,"description":"Invalid domain name."}"#,
        );
        assert!(
            matches!(&e, SectigoError::Api { status: 400, code: Some(-732), description } if description == "Invalid domain name.")
        );
        assert!(!e.is_retryable());
        let e = classify_failure(StatusCode::UNAUTHORIZED, &h, b"");
        assert!(matches!(
            e,
            SectigoError::Unauthorized {
                code: None,
                description: None
            }
        ));
        let e = classify_failure(StatusCode::NOT_FOUND, &h, b"<html>secret-ish</html>");
        assert!(!e.to_string().contains("secret-ish"), "{e}");
        let e = classify_failure(StatusCode::BAD_GATEWAY, &h, b"");
        assert!(e.is_retryable());
        let e = classify_failure(
            StatusCode::BAD_REQUEST,
            &h,
            br#"{"code":-700,"description":"Such domain already exists"}"#,
        );
        assert!(e.is_already_exists());
    }
}
