//! The admin API's JSON shapes. The CLI (`certline domains`, `certline keys`, …) reads the
//! same types, so the server and its client cannot drift apart.

use serde::{Deserialize, Serialize};

/// `GET /api/domains`: one page.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainList {
    /// `on`, `off` (no `[sectigo]` section) or `paused` (Sectigo rejects the credentials).
    pub bridge: String,
    pub domains: Vec<DomainView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /api/domains/count`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainCount {
    /// As in [`DomainList`].
    pub bridge: String,
    /// How many domains match the filters.
    pub count: u64,
}

/// One registered domain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainView {
    /// The normalised domain (`name` or `name:port`).
    pub domain: String,
    /// When any key first registered it (RFC 3339).
    pub registered: String,
    /// The bridge state as `command status` names it (`off` without a bridge).
    pub sectigo: String,
    /// `confirmed` when a key holding it is confirmed, else `unconfirmed`; `none` when no
    /// key holds it any more.
    pub key: String,
    /// The keys holding it.
    pub keys: Vec<HolderView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dcv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dcv_expires: Option<String>,
    /// The name Sectigo validates for this domain (its registrable domain or an operator's
    /// `dcv_domains` entry); its DCV state is this domain's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dcv_domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ct: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checked: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorView>,
    /// Why an operator should look at it; empty when nothing is wrong.
    pub needs_action: Vec<Reason>,
}

/// A key holding a domain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HolderView {
    pub id: String,
    pub confirmed: bool,
    pub revoked: bool,
}

/// The last failed bridge step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorView {
    pub step: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
    pub text: String,
    /// Will the bridge retry it by itself?
    pub transient: bool,
    pub at: String,
}

/// One reason a domain needs an operator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reason {
    /// `failed`, `not_in_sectigo`, `awaiting_confirmation`, `paused`, `dcv_not_validated`,
    /// `dcv_expiring`.
    pub reason: String,
    /// What is wrong and what to do, for people.
    pub detail: String,
}

/// `GET /api/keys`: one page.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /api/keys/count`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyCount {
    pub count: u64,
}

/// One API key (never the key itself: the store does not have it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyView {
    /// The key id: the first 12 hex digits of the key's SHA-256.
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub created: String,
    pub creator_ip: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked: Option<String>,
    /// How many domains it holds.
    pub domains: u64,
}

/// `POST /api/keys/{prefix}/revoke`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revoked {
    pub id: String,
    pub revoked: String,
    /// It was revoked before this request.
    pub already: bool,
}

/// `POST /api/keys/{prefix}/confirm`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyConfirmed {
    pub id: String,
    /// When the key was confirmed (before this request, when `already`).
    pub confirmed: String,
    /// It was confirmed before this request.
    pub already: bool,
    /// Domains of the key that were waiting for the confirmation and are queued now.
    pub requeued: usize,
}

/// `POST /api/domains/{domain}/requeue`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Requeued {
    /// The host name the bridge works on (no port).
    pub domain: String,
    pub sectigo: String,
}

/// `POST /api/domains`: register domains under a key, as `command add` would.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportRequest {
    pub apikey: String,
    pub domains: Vec<String>,
}

/// The answer to an [`ImportRequest`], one result per domain, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportResponse {
    pub results: Vec<ImportResult>,
}

/// What happened to one imported domain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportResult {
    pub input: String,
    /// The normalised form, when valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// `added`, `already_registered` or `invalid_domain`.
    pub outcome: String,
}

/// Every error answer: what went wrong and what to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiErrorBody {
    pub error: String,
}
