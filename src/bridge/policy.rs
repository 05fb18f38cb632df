//! The operator's policy: what certline may do in Sectigo, decided without any I/O.
//!
//! SCM's own permissions are per admin (an API key inherits its admin's role), far too coarse
//! to let arbitrary hosts register domains. certline holds the credentials and narrows them
//! here: only listed suffixes are ever forwarded, creation and CT-log monitoring are opt-in,
//! and an anonymous (unconfirmed) API key can be kept out entirely.

use std::net::IpAddr;
use std::time::Duration;

use chrono::NaiveDate;

use super::config::{SectigoConfig, normalize_suffix};
use super::sectigo::{CreateDomainRequest, CtLogMonitoring, DomainInfo, NewDelegation};

/// Why a domain is not forwarded to SCM. Shown to the user by the `status` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The domain is under none of `sectigo.allowed_suffixes`.
    SuffixNotAllowed,
    /// SCM inventories names, not addresses.
    IpLiteral,
    /// `sectigo.require_confirmed_key` is on and the key's e-mail is not confirmed yet.
    KeyNotConfirmed,
}

impl Skip {
    /// A short human explanation, suitable for a protocol reply.
    pub fn reason(self) -> &'static str {
        match self {
            Skip::SuffixNotAllowed => {
                "domain is outside the suffixes this server forwards to Sectigo"
            }
            Skip::IpLiteral => "IP addresses are not forwarded to Sectigo",
            Skip::KeyNotConfirmed => {
                "confirm the API key's e-mail before domains are forwarded to Sectigo"
            }
        }
    }
}

/// The policy decided from `[sectigo]`, with suffixes normalised once.
#[derive(Debug, Clone)]
pub struct Policy {
    suffixes: Vec<String>,
    create_missing: bool,
    org_id: Option<u64>,
    cert_types: Vec<String>,
    privileges: Vec<String>,
    ct: Option<CtLogMonitoring>,
    require_confirmed_key: bool,
    recheck_interval: Duration,
    dcv_expiry_window_days: u32,
}

impl Policy {
    /// Builds the policy; call [`SectigoConfig::validate`] first so the combination makes sense.
    pub fn from_config(config: &SectigoConfig) -> Self {
        let ct = config.ct_monitoring.then(|| CtLogMonitoring {
            enabled: true,
            include_subdomains: config.ct_include_subdomains,
            bucket_id: config.ct_bucket_id.clone(),
        });
        Policy {
            suffixes: config
                .allowed_suffixes
                .iter()
                .map(|s| normalize_suffix(s))
                .filter(|s| !s.is_empty())
                .collect(),
            create_missing: config.create_missing,
            org_id: config.org_id,
            cert_types: config.cert_types.clone(),
            privileges: config.domain_certificate_request_privileges.clone(),
            ct,
            require_confirmed_key: config.require_confirmed_key,
            recheck_interval: Duration::from_secs(config.recheck_interval_hours * 3600),
            dcv_expiry_window_days: config.dcv_expiry_window_days,
        }
    }

    /// Whether `domain` (a bare host name, no port, as certline normalised it) is under an
    /// allowed suffix: equal to it or ending in `.` + it. Matching is by whole labels, so
    /// `badexample.edu` is not under `example.edu`.
    pub fn is_forwardable(&self, domain: &str) -> bool {
        self.check_name(domain).is_ok()
    }

    fn check_name(&self, domain: &str) -> Result<(), Skip> {
        let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        let bare = d.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<IpAddr>().is_ok() {
            return Err(Skip::IpLiteral);
        }
        let allowed = self.suffixes.iter().any(|s| {
            d == *s
                || (d.len() > s.len()
                    && d.ends_with(s.as_str())
                    && d.as_bytes()[d.len() - s.len() - 1] == b'.')
        });
        if allowed {
            Ok(())
        } else {
            Err(Skip::SuffixNotAllowed)
        }
    }

    /// The full forwarding decision for a domain registered by a key.
    pub fn decide(&self, domain: &str, key_confirmed: bool) -> Result<(), Skip> {
        self.check_name(domain)?;
        if self.require_confirmed_key && !key_confirmed {
            return Err(Skip::KeyNotConfirmed);
        }
        Ok(())
    }

    /// Whether a forwardable domain that SCM does not have may be created there.
    pub fn may_create(&self, domain: &str) -> bool {
        self.create_missing && self.org_id.is_some() && self.is_forwardable(domain)
    }

    /// The `POST /api/domain/v1` body for `domain`, or `None` when creation is not allowed.
    /// The delegation goes to the configured org; CT-log monitoring is set at creation so it
    /// needs no second call.
    pub fn create_request(&self, domain: &str) -> Option<CreateDomainRequest> {
        if !self.may_create(domain) {
            return None;
        }
        Some(CreateDomainRequest {
            name: domain.trim().trim_end_matches('.').to_ascii_lowercase(),
            description: Some("Registered through certline".to_string()),
            active: Some(true),
            ct_log_monitoring: self.ct.clone(),
            delegations: vec![NewDelegation {
                org_id: self.org_id?,
                cert_types: self.cert_types.clone(),
                domain_certificate_request_privileges: self.privileges.clone(),
            }],
        })
    }

    /// The CT-log monitoring body to `PUT` when the domain's current setting differs from the
    /// policy, or `None` when nothing needs doing. With monitoring off in the policy, certline
    /// leaves whatever an administrator set in SCM alone.
    pub fn monitoring_update(&self, current: &DomainInfo) -> Option<CtLogMonitoring> {
        let wanted = self.ct.as_ref()?;
        match &current.ct_log_monitoring {
            Some(have)
                if have.enabled
                    && have.include_subdomains == wanted.include_subdomains
                    && have.bucket_id == wanted.bucket_id =>
            {
                None
            }
            _ => Some(wanted.clone()),
        }
    }

    /// Whether DCV is missing or expires within `dcv_expiry_window_days` of `today`.
    pub fn dcv_needs_attention(&self, dcv_expiration: Option<NaiveDate>, today: NaiveDate) -> bool {
        match dcv_expiration {
            None => true,
            Some(exp) => (exp - today).num_days() <= i64::from(self.dcv_expiry_window_days),
        }
    }

    /// How long until a synced domain is looked at again: the configured interval, but at
    /// most a day while DCV needs attention, so an expiry is caught in time.
    pub fn recheck_after(&self, dcv_expiration: Option<NaiveDate>, today: NaiveDate) -> Duration {
        let day = Duration::from_secs(24 * 3600);
        if self.dcv_needs_attention(dcv_expiration, today) {
            self.recheck_interval.min(day)
        } else {
            self.recheck_interval
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::config::{AuthConfig, BackoffConfig, HeaderAuthConfig};

    fn config() -> SectigoConfig {
        SectigoConfig {
            base_url: "https://cert-manager.com/api".into(),
            auth: AuthConfig::Headers(HeaderAuthConfig {
                login: "l".into(),
                customer_uri: "c".into(),
                password_env: Some("P".into()),
                password_file: None,
            }),
            request_timeout_secs: 60,
            connect_timeout_secs: 5,
            max_concurrency: 1,
            max_requests_per_second: 1.0,
            backoff: BackoffConfig::default(),
            unauthorized_retry_secs: 300,
            dcv_method: Default::default(),
            dcv_hook: None,
            dcv_hook_timeout_secs: 60,
            dcv_max_poll_secs: 3600,
            dcv_max_wait_hours: 72,
            dcv_domains: vec![],
            approve_delegations: false,
            dcv_hook_env: vec![],
            allow_insecure_http: false,
            recheck_interval_hours: 72,
            dcv_expiry_window_days: 30,
            dcv_action_api: None,
            allowed_suffixes: vec!["Example.EDU.".into(), "*.uni.org".into()],
            create_missing: false,
            org_id: None,
            cert_types: vec!["SSL".into()],
            domain_certificate_request_privileges: vec![],
            ct_monitoring: false,
            ct_bucket_id: None,
            ct_include_subdomains: false,
            require_confirmed_key: true,
        }
    }

    #[test]
    fn suffix_matching_is_by_whole_labels() {
        let p = Policy::from_config(&config());
        assert!(p.is_forwardable("example.edu"));
        assert!(p.is_forwardable("www.example.edu"));
        assert!(p.is_forwardable("a.b.EXAMPLE.edu."));
        assert!(p.is_forwardable("uni.org"));
        assert!(p.is_forwardable("x.uni.org"));
        assert!(!p.is_forwardable("badexample.edu"));
        assert!(!p.is_forwardable("example.edu.evil.com"));
        assert!(!p.is_forwardable("edu"));
        assert!(!p.is_forwardable("other.org"));
        assert!(!p.is_forwardable(""));
    }

    #[test]
    fn ip_literals_are_never_forwarded() {
        let mut c = config();
        c.allowed_suffixes = vec!["1".into(), "0.1".into()];
        let p = Policy::from_config(&c);
        assert_eq!(p.decide("10.0.0.1", true), Err(Skip::IpLiteral));
        assert_eq!(p.decide("[::1]", true), Err(Skip::IpLiteral));
    }

    #[test]
    fn unconfirmed_keys_are_held_back_only_when_required() {
        let mut c = config();
        let p = Policy::from_config(&c);
        assert_eq!(
            p.decide("www.example.edu", false),
            Err(Skip::KeyNotConfirmed)
        );
        assert_eq!(p.decide("www.example.edu", true), Ok(()));
        assert_eq!(p.decide("www.other.edu", true), Err(Skip::SuffixNotAllowed));
        c.require_confirmed_key = false;
        assert_eq!(
            Policy::from_config(&c).decide("www.example.edu", false),
            Ok(())
        );
    }

    #[test]
    fn creation_needs_the_switch_and_an_org() {
        let mut c = config();
        assert!(
            Policy::from_config(&c)
                .create_request("www.example.edu")
                .is_none()
        );
        c.create_missing = true;
        assert!(
            Policy::from_config(&c)
                .create_request("www.example.edu")
                .is_none()
        );
        c.org_id = Some(2622);
        let p = Policy::from_config(&c);
        assert!(p.create_request("www.other.edu").is_none());
        let req = p.create_request("WWW.Example.edu.").unwrap();
        assert_eq!(req.name, "www.example.edu");
        assert_eq!(req.delegations.len(), 1);
        assert_eq!(req.delegations[0].org_id, 2622);
        assert!(req.ct_log_monitoring.is_none());
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "name": "www.example.edu",
                "description": "Registered through certline",
                "active": true,
                "delegations": [{"orgId": 2622, "certTypes": ["SSL"]}]
            })
        );
    }

    #[test]
    fn creation_carries_privileges_and_ct_monitoring() {
        let mut c = config();
        c.create_missing = true;
        c.org_id = Some(7);
        c.domain_certificate_request_privileges = vec!["DOMAIN".into(), "SUBDOMAIN".into()];
        c.ct_monitoring = true;
        c.ct_bucket_id = Some("b-1".into());
        c.ct_include_subdomains = true;
        let json = serde_json::to_value(
            Policy::from_config(&c)
                .create_request("example.edu")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            json["delegations"][0]["domainCertificateRequestPrivileges"],
            serde_json::json!(["DOMAIN", "SUBDOMAIN"])
        );
        assert_eq!(
            json["ctLogMonitoring"],
            serde_json::json!({"enabled": true, "includeSubdomains": true, "bucketId": "b-1"})
        );
    }

    #[test]
    fn monitoring_is_updated_only_when_it_differs() {
        let mut c = config();
        let info: DomainInfo = serde_json::from_str(r#"{"id":1,"name":"example.edu"}"#).unwrap();
        assert!(Policy::from_config(&c).monitoring_update(&info).is_none());
        c.ct_monitoring = true;
        c.ct_bucket_id = Some("b-1".into());
        let p = Policy::from_config(&c);
        let want = p.monitoring_update(&info).unwrap();
        assert!(want.enabled);
        assert_eq!(want.bucket_id.as_deref(), Some("b-1"));
        let same: DomainInfo = serde_json::from_str(
            r#"{"id":1,"name":"example.edu","ctLogMonitoring":{"enabled":true,"includeSubdomains":false,"bucketId":"b-1"}}"#,
        )
        .unwrap();
        assert!(p.monitoring_update(&same).is_none());
        let other_bucket: DomainInfo = serde_json::from_str(
            r#"{"id":1,"name":"example.edu","ctLogMonitoring":{"enabled":true,"includeSubdomains":false,"bucketId":"b-2"}}"#,
        )
        .unwrap();
        assert!(p.monitoring_update(&other_bucket).is_some());
    }

    #[test]
    fn recheck_is_sooner_near_dcv_expiry() {
        let p = Policy::from_config(&config());
        let today = NaiveDate::from_ymd_opt(2025, 5, 1).unwrap();
        let far = NaiveDate::from_ymd_opt(2026, 5, 1).unwrap();
        let near = NaiveDate::from_ymd_opt(2025, 5, 31).unwrap();
        let day = Duration::from_secs(86_400);
        assert!(!p.dcv_needs_attention(Some(far), today));
        assert!(p.dcv_needs_attention(Some(near), today));
        assert!(p.dcv_needs_attention(None, today));
        assert_eq!(p.recheck_after(Some(far), today), 3 * day);
        assert_eq!(p.recheck_after(Some(near), today), day);
    }
}
