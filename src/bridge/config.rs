//! The `[sectigo]` section of certline's TOML configuration.
//!
//! Everything the bridge needs to talk to Sectigo Certificate Manager (SCM) and everything the
//! operator decides about what certline may do there (the policy) lives here. Secrets are
//! never written in the TOML itself: the file names an environment variable or a file that
//! holds them, so the configuration can be committed and shared without leaking credentials.
//!
//! ```toml
//! [sectigo]
//! base_url = "https://cert-manager.com/api"
//! allowed_suffixes = ["example.edu"]
//! create_missing = true
//! org_id = 2622
//!
//! [sectigo.auth]
//! mode = "headers"
//! login = "certline-api"
//! customer_uri = "example"
//! password_env = "SECTIGO_PASSWORD"
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::sectigo::{ClientOptions, Credentials, DcvApiVersion};
use crate::config::error::ConfigError;
use crate::config::secret::{check_secret_source, load_secret};

/// Sectigo's OAuth2 token endpoint for API keys (client credentials), per Sectigo's DevX docs.
pub const DEFAULT_TOKEN_URL: &str =
    "https://auth.sso.sectigo.com/auth/realms/apiclients/protocol/openid-connect/token";

/// API root for header (login/password) authentication.
pub const DEFAULT_BASE_URL: &str = "https://cert-manager.com/api";

/// Certificate types SCM accepts in a delegation.
pub const KNOWN_CERT_TYPES: &[&str] = &["SSL", "SMIME", "CodeSign"];

/// Values SCM accepts in `domainCertificateRequestPrivileges` (added in SCM 25.5).
pub const KNOWN_REQUEST_PRIVILEGES: &[&str] = &[
    "DOMAIN",
    "SUBDOMAIN",
    "WILDCARD_1ST_LEVEL",
    "WILDCARD_2ND_LEVEL",
];

/// The `[sectigo]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SectigoConfig {
    /// API root, including the `/api` path segment. Header auth uses
    /// `https://cert-manager.com/api` (some customers live on another host such as
    /// `https://hard.cert-manager.com/api`); OAuth2 uses
    /// `https://admin.enterprise.sectigo.com/api`.
    #[serde(default = "default_base_url")]
    pub base_url: String,

    /// How certline proves who it is to SCM.
    pub auth: AuthConfig,

    /// Whole-request timeout in seconds. SCM can be slow (clients in the field use 60-300 s).
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,

    /// TCP/TLS connect timeout in seconds; short, so an unreachable SCM is noticed quickly.
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,

    /// Requests in flight toward SCM at once, for the whole deployment: with several
    /// instances on one PostgreSQL database each takes its share (this divided by the live
    /// instances, at least 1; `bridge::sectigo::share`).
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,

    /// Upper bound on requests per second toward SCM (may be fractional, e.g. 0.5), for the
    /// whole deployment: with several instances on one PostgreSQL database each takes this
    /// divided by the live instances (at least 0.1).
    #[serde(default = "default_max_requests_per_second")]
    pub max_requests_per_second: f64,

    /// Retry delays for transient failures (timeouts, 5xx, 429, malformed responses).
    #[serde(default)]
    pub backoff: BackoffConfig,

    /// After Sectigo rejects certline's credentials (401) the whole bridge pauses; this is
    /// how often it tries again (one request) to see whether an operator fixed them.
    #[serde(default = "default_unauthorized_retry_secs")]
    pub unauthorized_retry_secs: u64,

    /// How often a synced domain is looked at again.
    #[serde(default = "default_recheck_interval_hours")]
    pub recheck_interval_hours: u64,

    /// A domain whose DCV expires within this many days is rechecked daily instead.
    #[serde(default = "default_dcv_expiry_window_days")]
    pub dcv_expiry_window_days: u32,

    /// DCV start/submit endpoints exist as `/api/dcv/v1/...` on cert-manager.com (Sectigo's
    /// 25.5 docs) and only as `/api/dcv/v2/...` on the OAuth2 admin host (OpenAPI 25.9.2).
    /// Unset picks by auth mode: v1 for headers, v2 for OAuth2.
    #[serde(default)]
    pub dcv_action_api: Option<DcvApiVersion>,

    /// Domains certline may forward to SCM: a domain qualifies if it equals one of these or
    /// ends with `.` + one of these. Empty is rejected by [`SectigoConfig::validate`].
    #[serde(default)]
    pub allowed_suffixes: Vec<String>,

    /// Create domains that are missing from SCM (needs `org_id`). When false, a missing
    /// domain is reported as "not in Sectigo" and left for a human.
    #[serde(default)]
    pub create_missing: bool,

    /// Organization (or department) id new domains are delegated to.
    #[serde(default)]
    pub org_id: Option<u64>,

    /// Certificate types in the delegation of a created domain.
    #[serde(default = "default_cert_types")]
    pub cert_types: Vec<String>,

    /// `domainCertificateRequestPrivileges` of the delegation (`DOMAIN`, `SUBDOMAIN`,
    /// `WILDCARD_1ST_LEVEL`, `WILDCARD_2ND_LEVEL`). Empty leaves the field out and SCM
    /// applies its own default.
    #[serde(default)]
    pub domain_certificate_request_privileges: Vec<String>,

    /// Switch CT-log monitoring on for every forwarded domain (needs `ct_bucket_id`).
    #[serde(default)]
    pub ct_monitoring: bool,

    /// The certificate bucket (UUID) that CT-log monitoring files new certificates into.
    #[serde(default)]
    pub ct_bucket_id: Option<String>,

    /// Whether CT-log monitoring also covers subdomains.
    #[serde(default)]
    pub ct_include_subdomains: bool,

    /// Forward only domains registered with an API key whose e-mail has been confirmed, so an
    /// anonymous key cannot make certline act in SCM.
    #[serde(default = "default_true")]
    pub require_confirmed_key: bool,

    /// DCV automation for forwarded domains whose DCV is missing, expired or expiring within
    /// `dcv_expiry_window_days`: `none` (report only), `cname` or `txt`.
    #[serde(default)]
    pub dcv_method: DcvMethod,

    /// An executable that publishes (and later removes) the DNS record DCV needs, in the
    /// spirit of certbot's `--manual-auth-hook`. Without one, such domains wait in
    /// `dcv_action_required` and `status` shows the record to publish.
    #[serde(default)]
    pub dcv_hook: Option<PathBuf>,

    /// How long one run of the DNS hook may take before it is killed and retried.
    #[serde(default = "default_dcv_hook_timeout_secs")]
    pub dcv_hook_timeout_secs: u64,

    /// The longest wait between two DCV status polls (Sectigo's `nextCheck` is honoured
    /// when it is sooner... or later, up to this).
    #[serde(default = "default_dcv_max_poll_secs")]
    pub dcv_max_poll_secs: u64,

    /// A submitted DCV that is not validated after this long is reported failed (and
    /// started again at the next recheck).
    #[serde(default = "default_dcv_max_wait_hours")]
    pub dcv_max_wait_hours: u64,

    /// Names to validate at instead of the registrable domain the Public Suffix List gives:
    /// a private suffix, or a delegated `dept.example.edu` that has its own validation in
    /// SCM. A forwarded name validates at the longest entry it equals or ends in.
    #[serde(default)]
    pub dcv_domains: Vec<String>,

    /// Approve a delegation SCM shows as `REQUESTED` (awaiting approval) with
    /// `POST /api/domain/v1/{id}/delegation/approve`. Only an MRAO may; off by default, so a
    /// RAO/DRAO account shows `sectigo=awaiting_delegation_approval` instead of failing.
    #[serde(default)]
    pub approve_delegations: bool,

    /// Environment variables passed on to the DNS hook besides `PATH`, `HOME`, `LANG` and
    /// the `CERTLINE_DCV_*` record variables (e.g. the DNS provider's token). Nothing else of
    /// certline's environment reaches the hook, so its Sectigo secret never does.
    #[serde(default)]
    pub dcv_hook_env: Vec<String>,

    /// Accept `http://` Sectigo URLs (base and token URL). Only for tests against a local
    /// simulator: over plain HTTP the password or client secret travels in clear.
    #[serde(default)]
    pub allow_insecure_http: bool,

    /// `[sectigo.acme]`: SCM ACME accounts for API keys (off when absent; see `crate::acme`).
    #[serde(default)]
    pub acme: Option<crate::acme::AcmeConfig>,
}

/// Which DNS DCV method certline drives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DcvMethod {
    /// certline reads DCV status but never starts a validation.
    #[default]
    None,
    /// `_<hex>.<domain> CNAME <hex>.<hex>.sectigo.com`: start, publish, submit.
    Cname,
    /// `_pki-validation.<domain> TXT "<value>"`: submit, publish.
    Txt,
}

/// How the client authenticates; `mode` selects the variant.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum AuthConfig {
    /// Legacy admin login: headers `login`, `password`, `customerUri` on every request.
    Headers(HeaderAuthConfig),
    /// OAuth2 client credentials (an SCM "API key" of an admin) and `Authorization: Bearer`.
    Oauth2(OAuth2Config),
}

/// `mode = "headers"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderAuthConfig {
    /// Admin login name (an admin with the "WS API use only" flag is recommended).
    pub login: String,
    /// The customer URI, the last path segment of `https://cert-manager.com/customer/<uri>`.
    pub customer_uri: String,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the password (a trailing newline is ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// `mode = "oauth2"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    /// Token endpoint (form POST, `grant_type=client_credentials`).
    #[serde(default = "default_token_url")]
    pub token_url: String,
    /// The API key's client id.
    pub client_id: String,
    /// Environment variable holding the client secret.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// File holding the client secret (a trailing newline is ignored).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
}

/// Exponential backoff bounds for transient failures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    /// First retry delay in seconds.
    #[serde(default = "default_backoff_initial_secs")]
    pub initial_secs: u64,
    /// Largest retry delay in seconds.
    #[serde(default = "default_backoff_max_secs")]
    pub max_secs: u64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial_secs: default_backoff_initial_secs(),
            max_secs: default_backoff_max_secs(),
        }
    }
}

impl BackoffConfig {
    /// Delay before retry number `attempt` (0 = first retry): `initial * 2^attempt` capped at
    /// `max`, scaled by `jitter` (a random factor the caller draws from `0.5..=1.0`, so many
    /// domains failing together do not retry in lockstep). A server-sent `Retry-After` wins
    /// when it is longer.
    pub fn delay(&self, attempt: u32, jitter: f64, retry_after: Option<Duration>) -> Duration {
        let max = Duration::from_secs(self.max_secs.max(1));
        let base = Duration::from_secs(self.initial_secs.max(1))
            .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .min(max);
        let jittered = base.mul_f64(jitter.clamp(0.0, 1.0));
        match retry_after {
            Some(server) if server > jittered => server,
            _ => jittered,
        }
    }
}

fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        problem: problem.into(),
    }
}

impl SectigoConfig {
    /// Sectigo URLs must be `https://`; `http://` only with `allow_insecure_http` (tests),
    /// because every request carries the password or a bearer token.
    fn check_scheme(&self, field: &'static str, url: &Url) -> Result<(), ConfigError> {
        match url.scheme() {
            "https" => Ok(()),
            "http" if self.allow_insecure_http => Ok(()),
            "http" => Err(invalid(
                field,
                "is http://, which would send the Sectigo credentials in clear; use https:// \
                 (allow_insecure_http = true exists for local test simulators only)",
            )),
            _ => Err(invalid(field, "must be an https URL")),
        }
    }

    /// Checks the section for combinations that cannot work, before anything talks to SCM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(acme) = &self.acme {
            acme.validate(self.org_id)?;
        }
        if let Some(hook) = &self.dcv_hook
            && !hook.is_file()
        {
            return Err(invalid(
                "sectigo.dcv_hook",
                format!(
                    "{} is not a file; give the path of an executable",
                    hook.display()
                ),
            ));
        }
        let base = Url::parse(&self.base_url).map_err(|e| {
            invalid(
                "sectigo.base_url",
                format!("is not a URL ({e}); use e.g. \"{DEFAULT_BASE_URL}\""),
            )
        })?;
        self.check_scheme("sectigo.base_url", &base)?;
        if !base.username().is_empty() || base.password().is_some() {
            return Err(invalid(
                "sectigo.base_url",
                "must not carry credentials; put them in [sectigo.auth]",
            ));
        }
        match &self.auth {
            AuthConfig::Headers(h) => {
                if h.login.trim().is_empty() {
                    return Err(invalid("sectigo.auth.login", "must not be empty"));
                }
                if h.customer_uri.trim().is_empty() {
                    return Err(invalid(
                        "sectigo.auth.customer_uri",
                        "must not be empty; it is the last part of your SCM login URL",
                    ));
                }
                check_secret_source(
                    "sectigo.auth.password_env",
                    h.password_env.as_deref(),
                    h.password_file.as_deref(),
                )?;
            }
            AuthConfig::Oauth2(o) => {
                let url = Url::parse(&o.token_url).map_err(|e| {
                    invalid("sectigo.auth.token_url", format!("is not a URL ({e})"))
                })?;
                self.check_scheme("sectigo.auth.token_url", &url)?;
                if o.client_id.trim().is_empty() {
                    return Err(invalid("sectigo.auth.client_id", "must not be empty"));
                }
                check_secret_source(
                    "sectigo.auth.client_secret_env",
                    o.client_secret_env.as_deref(),
                    o.client_secret_file.as_deref(),
                )?;
            }
        }
        if self.request_timeout_secs == 0 {
            return Err(invalid(
                "sectigo.request_timeout_secs",
                "must be at least 1",
            ));
        }
        if self.connect_timeout_secs == 0 {
            return Err(invalid(
                "sectigo.connect_timeout_secs",
                "must be at least 1",
            ));
        }
        if self.max_concurrency == 0 {
            return Err(invalid("sectigo.max_concurrency", "must be at least 1"));
        }
        if !(self.max_requests_per_second.is_finite() && self.max_requests_per_second > 0.0) {
            return Err(invalid(
                "sectigo.max_requests_per_second",
                "must be a positive number, e.g. 2 or 0.5",
            ));
        }
        if self.backoff.initial_secs == 0 {
            return Err(invalid(
                "sectigo.backoff.initial_secs",
                "must be at least 1",
            ));
        }
        if self.backoff.max_secs < self.backoff.initial_secs {
            return Err(invalid(
                "sectigo.backoff.max_secs",
                "must not be smaller than sectigo.backoff.initial_secs",
            ));
        }
        if self.recheck_interval_hours == 0 {
            return Err(invalid(
                "sectigo.recheck_interval_hours",
                "must be at least 1",
            ));
        }
        for d in &self.dcv_domains {
            let n = normalize_suffix(d);
            if n.is_empty() || !n.contains('.') || n.split('.').any(str::is_empty) {
                return Err(invalid(
                    "sectigo.dcv_domains",
                    format!("{d:?} is not a domain name; use names like \"dept.example.edu\""),
                ));
            }
        }
        for name in &self.dcv_hook_env {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(invalid(
                    "sectigo.dcv_hook_env",
                    format!("{name:?} is not an environment variable name"),
                ));
            }
        }
        if self.allowed_suffixes.is_empty() {
            return Err(invalid(
                "sectigo.allowed_suffixes",
                "is empty, so no domain would ever be forwarded; list your domains, e.g. [\"example.edu\"]",
            ));
        }
        for suffix in &self.allowed_suffixes {
            let s = normalize_suffix(suffix);
            if s.is_empty()
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                || s.split('.').any(str::is_empty)
            {
                return Err(invalid(
                    "sectigo.allowed_suffixes",
                    format!(
                        "{suffix:?} is not a domain suffix; use names like \"example.edu\" (IDNs in A-label form)"
                    ),
                ));
            }
        }
        if self.create_missing {
            match self.org_id {
                None => {
                    return Err(invalid(
                        "sectigo.org_id",
                        "sectigo.create_missing needs sectigo.org_id (the organization new domains are delegated to)",
                    ));
                }
                Some(0) => return Err(invalid("sectigo.org_id", "must be at least 1")),
                Some(_) => {}
            }
        }
        check_list(
            "sectigo.cert_types",
            &self.cert_types,
            KNOWN_CERT_TYPES,
            true,
        )?;
        check_list(
            "sectigo.domain_certificate_request_privileges",
            &self.domain_certificate_request_privileges,
            KNOWN_REQUEST_PRIVILEGES,
            false,
        )?;
        if self.ct_monitoring
            && self
                .ct_bucket_id
                .as_deref()
                .is_none_or(|b| b.trim().is_empty())
        {
            return Err(invalid(
                "sectigo.ct_bucket_id",
                "sectigo.ct_monitoring needs sectigo.ct_bucket_id (the UUID of the certificate bucket in SCM)",
            ));
        }
        Ok(())
    }

    /// Validates the section and loads its secret, giving what [`super::SectigoClient::new`]
    /// needs.
    pub fn client_options(&self) -> Result<ClientOptions, ConfigError> {
        self.validate()?;
        let base_url = Url::parse(&self.base_url)
            .map_err(|e| invalid("sectigo.base_url", format!("is not a URL ({e})")))?;
        let credentials = match &self.auth {
            AuthConfig::Headers(h) => Credentials::Headers {
                login: h.login.clone(),
                password: load_secret(
                    "sectigo.auth.password_env",
                    h.password_env.as_deref(),
                    h.password_file.as_deref(),
                )?,
                customer_uri: h.customer_uri.clone(),
            },
            AuthConfig::Oauth2(o) => Credentials::OAuth2 {
                token_url: Url::parse(&o.token_url).map_err(|e| {
                    invalid("sectigo.auth.token_url", format!("is not a URL ({e})"))
                })?,
                client_id: o.client_id.clone(),
                client_secret: load_secret(
                    "sectigo.auth.client_secret_env",
                    o.client_secret_env.as_deref(),
                    o.client_secret_file.as_deref(),
                )?,
            },
        };
        let dcv_action_api = self.dcv_action_api.unwrap_or(match self.auth {
            AuthConfig::Headers(_) => DcvApiVersion::V1,
            AuthConfig::Oauth2(_) => DcvApiVersion::V2,
        });
        Ok(ClientOptions {
            base_url,
            credentials,
            request_timeout: Duration::from_secs(self.request_timeout_secs),
            connect_timeout: Duration::from_secs(self.connect_timeout_secs),
            max_concurrency: self.max_concurrency,
            max_requests_per_second: self.max_requests_per_second,
            live_instances: None,
            dcv_action_api,
            allow_insecure_http: self.allow_insecure_http,
            extra_root_certificates_pem: Vec::new(),
        })
    }
}

/// Lower-cases a configured suffix and drops a leading `*.`/`.` and a trailing `.`, so
/// `"*.Example.EDU."` and `"example.edu"` mean the same.
pub fn normalize_suffix(suffix: &str) -> String {
    let s = suffix.trim().to_ascii_lowercase();
    let s = s.strip_prefix("*.").unwrap_or(&s);
    let s = s.trim_start_matches('.').trim_end_matches('.');
    s.to_string()
}

fn check_list(
    field: &'static str,
    values: &[String],
    known: &[&str],
    required: bool,
) -> Result<(), ConfigError> {
    if required && values.is_empty() {
        return Err(invalid(
            field,
            format!("must list at least one of {known:?}"),
        ));
    }
    for (i, v) in values.iter().enumerate() {
        if !known.contains(&v.as_str()) {
            return Err(invalid(
                field,
                format!("{v:?} is not one of {known:?} (spelling and case matter)"),
            ));
        }
        if values[..i].contains(v) {
            return Err(invalid(field, format!("{v:?} is listed twice")));
        }
    }
    Ok(())
}

fn default_base_url() -> String {
    DEFAULT_BASE_URL.to_string()
}
fn default_token_url() -> String {
    DEFAULT_TOKEN_URL.to_string()
}
fn default_request_timeout_secs() -> u64 {
    120
}
fn default_connect_timeout_secs() -> u64 {
    10
}
fn default_max_concurrency() -> usize {
    2
}
fn default_max_requests_per_second() -> f64 {
    2.0
}
fn default_backoff_initial_secs() -> u64 {
    30
}
fn default_backoff_max_secs() -> u64 {
    6 * 3600
}
fn default_dcv_hook_timeout_secs() -> u64 {
    60
}
fn default_dcv_max_poll_secs() -> u64 {
    3600
}
fn default_dcv_max_wait_hours() -> u64 {
    72
}
fn default_unauthorized_retry_secs() -> u64 {
    300
}
fn default_recheck_interval_hours() -> u64 {
    24
}
fn default_dcv_expiry_window_days() -> u32 {
    30
}
fn default_cert_types() -> Vec<String> {
    vec!["SSL".to_string()]
}
fn default_true() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<SectigoConfig, toml::de::Error> {
        #[derive(Deserialize)]
        struct Root {
            sectigo: SectigoConfig,
        }
        toml::from_str::<Root>(toml_text).map(|r| r.sectigo)
    }

    const MINIMAL: &str = r#"
        [sectigo]
        allowed_suffixes = ["example.edu"]
        [sectigo.auth]
        mode = "headers"
        login = "api"
        customer_uri = "example"
        password_env = "CERTLINE_TEST_UNUSED"
    "#;

    #[test]
    fn minimal_section_gets_documented_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.base_url, DEFAULT_BASE_URL);
        assert_eq!(c.request_timeout_secs, 120);
        assert_eq!(c.max_concurrency, 2);
        assert_eq!(c.cert_types, vec!["SSL"]);
        assert!(c.require_confirmed_key);
        assert!(!c.create_missing);
        assert!(!c.ct_monitoring);
        assert_eq!(c.backoff.initial_secs, 30);
        c.validate().unwrap();
    }

    #[test]
    fn full_oauth2_section_parses() {
        let c = parse(
            r#"
            [sectigo]
            base_url = "https://admin.enterprise.sectigo.com/api"
            request_timeout_secs = 60
            max_concurrency = 4
            max_requests_per_second = 0.5
            recheck_interval_hours = 12
            dcv_expiry_window_days = 45
            dcv_action_api = "v2"
            allowed_suffixes = ["example.edu", "*.Example.ORG."]
            create_missing = true
            org_id = 2622
            cert_types = ["SSL", "SMIME"]
            domain_certificate_request_privileges = ["DOMAIN", "SUBDOMAIN"]
            ct_monitoring = true
            ct_bucket_id = "6d505c9c-b66b-44f9-8ba4-3aaf4d69aed6"
            ct_include_subdomains = true
            require_confirmed_key = false
            [sectigo.backoff]
            initial_secs = 5
            max_secs = 600
            [sectigo.auth]
            mode = "oauth2"
            client_id = "abc"
            client_secret_file = "/run/secrets/sectigo"
        "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert!(matches!(&c.auth, AuthConfig::Oauth2(o) if o.token_url == DEFAULT_TOKEN_URL));
        assert_eq!(c.dcv_action_api, Some(DcvApiVersion::V2));
        assert_eq!(c.backoff.max_secs, 600);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = parse(&MINIMAL.replace("[sectigo.auth]", "colour = 1\n[sectigo.auth]"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("colour"), "{err}");
        let err = parse(&format!("{MINIMAL}\npassword = \"inline\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("password"), "{err}");
    }

    #[test]
    fn create_missing_without_org_id_is_explained() {
        let c = parse(&MINIMAL.replace("[sectigo.auth]", "create_missing = true\n[sectigo.auth]"))
            .unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("sectigo.create_missing needs sectigo.org_id"),
            "{err}"
        );
    }

    #[test]
    fn ct_monitoring_without_bucket_is_explained() {
        let c = parse(&MINIMAL.replace("[sectigo.auth]", "ct_monitoring = true\n[sectigo.auth]"))
            .unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("needs sectigo.ct_bucket_id"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected_with_the_field_name() {
        let cases = [
            ("allowed_suffixes = []", "sectigo.allowed_suffixes"),
            (
                "allowed_suffixes = [\"exa mple.edu\"]",
                "sectigo.allowed_suffixes",
            ),
            ("allowed_suffixes = [\"a..b\"]", "sectigo.allowed_suffixes"),
            ("cert_types = [\"ssl\"]", "sectigo.cert_types"),
            ("cert_types = []", "sectigo.cert_types"),
            ("cert_types = [\"SSL\", \"SSL\"]", "sectigo.cert_types"),
            (
                "domain_certificate_request_privileges = [\"ALL\"]",
                "sectigo.domain_certificate_request_privileges",
            ),
            ("max_concurrency = 0", "sectigo.max_concurrency"),
            (
                "max_requests_per_second = 0.0",
                "sectigo.max_requests_per_second",
            ),
            ("base_url = \"ftp://x\"", "sectigo.base_url"),
            ("base_url = \"https://u:p@x/api\"", "sectigo.base_url"),
        ];
        for (line, field) in cases {
            let text = MINIMAL
                .replace("allowed_suffixes = [\"example.edu\"]", "")
                .replace(
                    "[sectigo.auth]",
                    &format!(
                        "{}\n{line}\n[sectigo.auth]",
                        if line.starts_with("allowed_suffixes") {
                            ""
                        } else {
                            "allowed_suffixes = [\"example.edu\"]"
                        }
                    ),
                );
            let err = parse(&text).unwrap().validate().unwrap_err().to_string();
            assert!(err.starts_with(field), "{line}: {err}");
        }
    }

    #[test]
    fn secret_source_must_be_exactly_one() {
        let none = parse(&MINIMAL.replace("password_env = \"CERTLINE_TEST_UNUSED\"", ""))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(matches!(none, ConfigError::Secret { .. }));
        let both = parse(&MINIMAL.replace(
            "password_env = \"CERTLINE_TEST_UNUSED\"",
            "password_env = \"X\"\npassword_file = \"/x\"",
        ))
        .unwrap()
        .validate()
        .unwrap_err();
        assert!(both.to_string().contains("not both"));
    }

    #[test]
    fn client_options_carry_the_secret_but_debug_hides_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "very-secret-pw").unwrap();
        let text = MINIMAL.replace(
            "password_env = \"CERTLINE_TEST_UNUSED\"",
            &format!("password_file = {:?}", path.display().to_string()),
        );
        let opts = parse(&text).unwrap().client_options().unwrap();
        assert_eq!(opts.dcv_action_api, DcvApiVersion::V1);
        let dbg = format!("{opts:?}");
        assert!(!dbg.contains("very-secret-pw"), "{dbg}");
        match opts.credentials {
            Credentials::Headers { password, .. } => {
                assert_eq!(password.expose(), "very-secret-pw")
            }
            Credentials::OAuth2 { .. } => panic!("expected header credentials"),
        }
    }

    #[test]
    fn backoff_grows_caps_and_respects_retry_after() {
        let b = BackoffConfig {
            initial_secs: 10,
            max_secs: 100,
        };
        assert_eq!(b.delay(0, 1.0, None), Duration::from_secs(10));
        assert_eq!(b.delay(1, 1.0, None), Duration::from_secs(20));
        assert_eq!(b.delay(3, 1.0, None), Duration::from_secs(80));
        assert_eq!(b.delay(4, 1.0, None), Duration::from_secs(100));
        assert_eq!(b.delay(60, 1.0, None), Duration::from_secs(100));
        assert_eq!(b.delay(1, 0.5, None), Duration::from_secs(10));
        assert_eq!(
            b.delay(0, 1.0, Some(Duration::from_secs(300))),
            Duration::from_secs(300)
        );
        assert_eq!(
            b.delay(2, 1.0, Some(Duration::from_secs(1))),
            Duration::from_secs(40)
        );
    }
}
