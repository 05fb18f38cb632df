//! The wire shapes of SCM's domain and DCV APIs and their status vocabularies, tolerant in
//! what they accept (display names, `null`s, unknown values) and exact in what they send.

use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
    pub(super) fn segment(self) -> &'static str {
        match self {
            DcvApiVersion::V1 => "v1",
            DcvApiVersion::V2 => "v2",
        }
    }
}

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
pub(super) struct DomainBody<'a> {
    pub(super) domain: &'a str,
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
}
