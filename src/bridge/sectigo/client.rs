//! The SCM client: one method per endpoint on top of one request path ([`SectigoClient::send`])
//! that applies the concurrency and rate limits, authentication and error decoding.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
use url::Url;

use super::auth::{AuthState, Credentials, TokenCache, header_value};
use super::error::{SectigoError, classify_failure, error_chain, truncate};
use super::response::{ScmResponse, read_response};
use super::share::{Limits, LiveInstances, Share};
use super::types::*;

/// SCM's largest page size for list endpoints.
pub const MAX_PAGE_SIZE: u32 = 200;

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
    /// Requests in flight at once, for the whole deployment: divided by `live_instances`.
    pub max_concurrency: usize,
    /// Request rate ceiling (token requests excluded), for the whole deployment: divided by
    /// `live_instances`.
    pub max_requests_per_second: f64,
    /// How many instances share the budget now (`Store::live_instances`); `None`: this one
    /// alone.
    pub live_instances: Option<LiveInstances>,
    /// Path version for DCV start/submit.
    pub dcv_action_api: DcvApiVersion,
    /// Accept `http://` URLs (local simulators in tests only; credentials travel in clear).
    pub allow_insecure_http: bool,
    /// Extra trusted CA certificates (PEM), besides the platform's: a private test CA.
    pub extra_root_certificates_pem: Vec<Vec<u8>>,
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
            live_instances: None,
            dcv_action_api,
            allow_insecure_http: false,
            extra_root_certificates_pem: Vec::new(),
        }
    }
}

/// The SCM client. Cheap to clone; clones share the connection pool, the token cache and
/// the concurrency and rate limits.
#[derive(Clone)]
pub struct SectigoClient {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) http: reqwest::Client,
    base: Url,
    pub(super) auth: AuthState,
    /// This instance's share of the concurrency and rate budget ([`super::share`]).
    limits: Limits,
    dcv_action_api: DcvApiVersion,
    /// Until when every request waits: set by a 429 or 503 with `Retry-After`. SCM documents
    /// no rate limit, so such an answer is read as the server asking all callers to wait,
    /// not just the request that got it.
    slow_down: std::sync::Mutex<Option<Instant>>,
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

impl SectigoClient {
    /// Builds a client. Makes no request yet (an OAuth2 token is fetched on first use).
    pub fn new(options: ClientOptions) -> Result<Self, SectigoError> {
        let mut base = options.base_url;
        require_secure("base URL", &base, options.allow_insecure_http)?;
        if let Credentials::OAuth2 { token_url, .. } = &options.credentials {
            require_secure("OAuth2 token URL", token_url, options.allow_insecure_http)?;
        }
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let mut defaults = HeaderMap::new();
        defaults.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let mut builder = reqwest::Client::builder();
        for pem in &options.extra_root_certificates_pem {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|e| SectigoError::Setup(format!("invalid CA certificate: {e}")))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
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
        let limits = Limits::new(
            options.max_concurrency,
            options.max_requests_per_second,
            options.live_instances,
        )?;
        Ok(SectigoClient {
            inner: Arc::new(Inner {
                http,
                base,
                auth,
                limits,
                dcv_action_api: options.dcv_action_api,
                slow_down: std::sync::Mutex::new(None),
            }),
        })
    }

    /// This instance's share of the deployment's request budget now.
    pub fn share(&self) -> Share {
        self.inner.limits.share()
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
        let reply = self.send(Method::GET, "domain/v1", &query, None).await?;
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
    ///
    /// An internationalised name is looked up as certline stores it (A-label,
    /// `xn--…`) and, if SCM has nothing under that spelling, as its U-label: an
    /// administrator may have entered it in Unicode in the SCM interface, and creating the
    /// A-label then only meets -700.
    pub async fn find_domain(&self, name: &str) -> Result<Option<DomainRef>, SectigoError> {
        if let Some(found) = self.find_domains_by_name(name).await?.into_iter().next() {
            return Ok(Some(found));
        }
        match unicode_spelling(name) {
            Some(u_label) => Ok(self
                .find_domains_by_name(&u_label)
                .await?
                .into_iter()
                .next()),
            None => Ok(None),
        }
    }

    /// `GET /api/domain/v1/{id}`.
    pub async fn domain_info(&self, id: u64) -> Result<DomainInfo, SectigoError> {
        let reply = self
            .send(Method::GET, &format!("domain/v1/{id}"), &[], None)
            .await?;
        decode(&reply, "the domain details")
    }

    /// `POST /api/domain/v1`. "Already exists" (-700) is an outcome, not an error.
    pub async fn create_domain(
        &self,
        request: &CreateDomainRequest,
    ) -> Result<CreateOutcome, SectigoError> {
        match self
            .send(Method::POST, "domain/v1", &[], Some(to_json(request)?))
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
        self.send(
            Method::PUT,
            &format!("domain/v1/{id}/monitoring"),
            &[],
            Some(to_json(monitoring)?),
        )
        .await
        .map(drop)
    }

    /// `POST /api/domain/v1/{id}/delegation/approve`: approve a `REQUESTED` delegation to
    /// `org_id`. SCM allows it to MRAO admins only; others get a 400 (code -3/-25/-226).
    pub async fn approve_delegation(&self, id: u64, org_id: u64) -> Result<(), SectigoError> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Approve {
            org_id: u64,
        }
        self.send(
            Method::POST,
            &format!("domain/v1/{id}/delegation/approve"),
            &[],
            Some(to_json(&Approve { org_id })?),
        )
        .await
        .map(drop)
    }

    /// `POST /api/dcv/v2/validation/status`.
    pub async fn dcv_status(&self, domain: &str) -> Result<DcvStatus, SectigoError> {
        let reply = self
            .send(
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
            .send(Method::GET, "dcv/v2/validation", &query, None)
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

    async fn dcv_action(&self, action: &str, domain: &str) -> Result<ScmResponse, SectigoError> {
        let path = format!(
            "dcv/{}/validation/{action}",
            self.inner.dcv_action_api.segment()
        );
        self.send(
            Method::POST,
            &path,
            &[],
            Some(to_json(&DomainBody { domain })?),
        )
        .await
    }

    /// Pauses every request of this client for `wait` (a 429/503 `Retry-After`), capped at
    /// an hour so a nonsense header cannot stop the bridge for good.
    fn slow_down_for(&self, wait: Duration) {
        let until = Instant::now() + wait.min(Duration::from_secs(3600));
        let mut slot = self
            .inner
            .slow_down
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if slot.is_none_or(|current| current < until) {
            tracing::warn!(
                wait_secs = wait.as_secs(),
                "Sectigo asked certline to slow down (Retry-After); pausing all requests"
            );
            *slot = Some(until);
        }
    }

    async fn wait_out_slow_down(&self) {
        let until = *self
            .inner
            .slow_down
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(until) = until {
            tokio::time::sleep_until(until.into()).await;
        }
    }

    /// Sends one request to `path` (relative to the API root, e.g. `domain/v1`) under the
    /// concurrency and rate limits, with authentication, and sorts a failure into a
    /// [`SectigoError`]. Every endpoint method goes through here; other modules (the ACME
    /// account API) call it directly for endpoints this file does not wrap. With OAuth2, a
    /// 401 drops the cached token and the request is retried once with a new one (tokens
    /// can be revoked before they expire).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<ScmResponse, SectigoError> {
        let _permit = self.inner.limits.permit().await?;
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
            self.wait_out_slow_down().await;
            self.inner.limits.until_ready().await;
            let (auth_headers, token_generation) =
                self.inner.auth.headers(&self.inner.http).await?;
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
                self.inner.auth.forget_token(generation).await;
                retried_auth = true;
                continue;
            }
            if status.is_success() {
                return Ok(ScmResponse {
                    headers,
                    body: bytes,
                });
            }
            let err = classify_failure(status, &headers, &bytes, &url);
            if matches!(status.as_u16(), 429 | 503)
                && let Some(wait) = err.retry_after()
            {
                self.slow_down_for(wait);
            }
            tracing::debug!(%method, path = url.path(), error = %err, "sectigo request refused");
            return Err(err);
        }
    }
}

pub(crate) fn total_count(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("x-total-count")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The U-label spelling of a name with `xn--` labels, when it differs.
fn unicode_spelling(name: &str) -> Option<String> {
    if !name
        .split('.')
        .any(|l| l.len() > 4 && l[..4].eq_ignore_ascii_case("xn--"))
    {
        return None;
    }
    let (unicode, result) = idna::domain_to_unicode(name);
    (result.is_ok() && unicode != name).then_some(unicode)
}

/// Refuses `http://` unless allowed: every request carries the password or a token.
fn require_secure(what: &str, url: &Url, allow_http: bool) -> Result<(), SectigoError> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_http => Ok(()),
        "http" => Err(SectigoError::Setup(format!(
            "the Sectigo {what} {url} is http://, which would send credentials in clear; use https://"
        ))),
        other => Err(SectigoError::Setup(format!(
            "the Sectigo {what} has scheme {other}:, expected https://"
        ))),
    }
}

/// The id at the end of `Location: https://cert-manager.com/api/domain/v1/396`.
pub(crate) fn id_from_location(headers: &HeaderMap) -> Result<u64, SectigoError> {
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

/// Parses a JSON success body; an empty or malformed one is a [`SectigoError::Decode`] naming
/// `what` (the call), never quoting the body.
pub fn decode<T: DeserializeOwned>(
    reply: &ScmResponse,
    what: &'static str,
) -> Result<T, SectigoError> {
    if reply.body.iter().all(u8::is_ascii_whitespace) {
        return Err(SectigoError::Decode {
            what,
            detail: "empty body where JSON was expected".into(),
        });
    }
    serde_json::from_slice(&reply.body).map_err(|e| SectigoError::Decode {
        what,
        detail: format!(
            "{}; body starts {}",
            truncate(&e.to_string(), 200),
            body_preview(&reply.body)
        ),
    })
}

/// The first bytes of a body SCM should not have sent, for the operator: printable ASCII
/// only, 60 characters at most. Only API bodies are shown this way (they carry domain data,
/// never credentials); the token endpoint's body never is.
fn body_preview(body: &[u8]) -> String {
    let shown: String = body
        .iter()
        .take(60)
        .map(|&b| match b {
            b' '..=b'~' if b != b'"' => char::from(b),
            b'"' => '\'',
            _ => '?',
        })
        .collect();
    format!("\"{shown}\"{}", if body.len() > 60 { "…" } else { "" })
}

/// Encodes a request body.
pub fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, SectigoError> {
    serde_json::to_vec(value)
        .map_err(|e| SectigoError::Setup(format!("cannot encode request: {e}")))
}

fn comparable_name(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idn_names_have_a_unicode_spelling() {
        assert_eq!(
            unicode_spelling("xn--bcher-kva.example").as_deref(),
            Some("bücher.example")
        );
        assert_eq!(unicode_spelling("plain.example"), None);
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
}
