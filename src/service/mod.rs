//! The rules: one function per command, turning a parsed [`Request`] into a [`Reply`].
//!
//! Nothing here knows about bytes or sockets; the only I/O is the store. Checks run in the
//! order protocol.md §6 documents: field formats (422, 406), rate limits (429), the key
//! (401, 403), then the command. Every write waits for [`Store::commit`] before it says `ok`.

mod add;
mod apikey;
mod claim;
mod list;
pub mod rate_limit;
mod remove;
mod status;

use crate::apikey::{ApiKey, KeyHash};
use crate::bridge::BridgeHandle;
use crate::confirm::Confirmations;
use crate::protocol::{ErrorCode, Reply, Request};
use crate::store::{CapExceeded, ClaimCaps, KeyRecord, Store, StoreError, UnixTime};
use rate_limit::RateLimiters;
pub use rate_limit::RateLimits;
use std::net::IpAddr;
use std::sync::Arc;
use thiserror::Error;

/// Who is asking, and when.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// The client's source address (for rate limits and the audit trail).
    pub peer: IpAddr,
    /// The request's time (seconds since the epoch).
    pub now: UnixTime,
}

impl Context {
    /// A context for a request arriving now.
    pub fn now(peer: IpAddr) -> Self {
        Self {
            peer,
            now: chrono::Utc::now().timestamp(),
        }
    }
}

/// Why a well-formed request was refused. Each variant is one wire code and text.
#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("invalid api key format")]
    InvalidApiKey,
    #[error("invalid email")]
    InvalidEmail,
    #[error("invalid domain")]
    InvalidDomain,
    #[error("invalid offset")]
    InvalidOffset,
    #[error("too many requests")]
    RateLimited,
    #[error("unknown api key")]
    UnknownKey,
    #[error("api key revoked")]
    Revoked,
    #[error("domain not registered")]
    NotRegistered,
    #[error("api key claimed by another email")]
    ClaimedByOther,
    #[error("too many unconfirmed keys for this email")]
    TooManyUnconfirmed,
    #[error("too many new addresses from your address today")]
    TooManyNewEmails,
    #[error("storage failure")]
    Storage(#[source] StoreError),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        ServiceError::Storage(e)
    }
}

impl ServiceError {
    /// The wire code.
    pub fn code(&self) -> ErrorCode {
        use ServiceError::*;
        match self {
            InvalidApiKey | InvalidEmail | InvalidOffset => ErrorCode::InvalidField,
            InvalidDomain => ErrorCode::InvalidDomain,
            RateLimited | TooManyUnconfirmed | TooManyNewEmails => ErrorCode::TooManyRequests,
            UnknownKey => ErrorCode::UnknownKey,
            Revoked => ErrorCode::Forbidden,
            NotRegistered => ErrorCode::NotFound,
            ClaimedByOther => ErrorCode::Conflict,
            Storage(_) => ErrorCode::Internal,
        }
    }

    /// The error as a reply. Store details go to the log, not to the client.
    pub fn into_reply(self) -> Reply {
        if let ServiceError::Storage(e) = &self {
            tracing::error!(error = %e, "storage failure");
        }
        Reply::error(self.code(), self.to_string())
    }
}

/// The command handlers' shared state.
pub struct Service {
    store: Arc<Store>,
    limiters: RateLimiters,
    /// Present when the Sectigo bridge is configured.
    bridge: Option<Arc<BridgeHandle>>,
    /// The claim caps (`[claims]`).
    caps: ClaimCaps,
    /// Sends claim confirmation links; present when the admin listener (which serves the
    /// links) is configured.
    confirmations: Option<Arc<Confirmations>>,
}

impl From<CapExceeded> for ServiceError {
    fn from(cap: CapExceeded) -> Self {
        match cap {
            CapExceeded::UnconfirmedKeys => ServiceError::TooManyUnconfirmed,
            CapExceeded::NewEmails => ServiceError::TooManyNewEmails,
        }
    }
}

impl Service {
    /// A service over `store` with the given per-address rate limits.
    pub fn new(store: Arc<Store>, limits: &RateLimits) -> Self {
        Self {
            store,
            limiters: RateLimiters::new(limits),
            bridge: None,
            caps: ClaimCaps::default(),
            confirmations: None,
        }
    }

    /// Applies the claim caps and, with `confirmations`, mails confirmation links for every
    /// new claim.
    pub fn with_claims(
        mut self,
        caps: ClaimCaps,
        confirmations: Option<Arc<Confirmations>>,
    ) -> Self {
        self.caps = caps;
        self.confirmations = confirmations;
        self
    }

    /// Starts the confirmation e-mail for a new claim (in the background).
    fn claimed(&self, hash: crate::apikey::KeyHash, email: &str, ctx: Context) {
        if let Some(c) = &self.confirmations {
            c.key_claimed(hash, email.to_owned(), ctx.peer, ctx.now);
        }
    }

    /// Reports the Sectigo bridge's state in `status`.
    pub fn with_bridge(mut self, bridge: Arc<BridgeHandle>) -> Self {
        self.bridge = Some(bridge);
        self
    }

    /// The store, for the server's shutdown flush and for tests.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The rate limiters (the server prunes them periodically).
    pub fn limiters(&self) -> &RateLimiters {
        &self.limiters
    }

    /// Runs one request.
    pub async fn handle(&self, request: Request, ctx: Context) -> Reply {
        let result = match request {
            Request::Ping => Ok(Reply::ok("pong")),
            Request::Apikey { email } => apikey::run(self, email.as_deref(), ctx).await,
            Request::Claim { apikey, email } => claim::run(self, &apikey, &email, ctx).await,
            Request::Add { apikey, domain } => add::run(self, &apikey, &domain, ctx).await,
            Request::Status { apikey, domain } => status::run(self, &apikey, &domain).await,
            Request::List { apikey, offset } => list::run(self, &apikey, offset.as_deref()),
            Request::Remove { apikey, domain } => remove::run(self, &apikey, &domain, ctx).await,
        };
        result.unwrap_or_else(ServiceError::into_reply)
    }

    /// Checks a key's format (422).
    fn parse_key(apikey: &str) -> Result<ApiKey, ServiceError> {
        ApiKey::parse(apikey).map_err(|_| ServiceError::InvalidApiKey)
    }

    /// Looks a key up: unknown is 401, revoked is 403.
    fn authorize(&self, key: &ApiKey) -> Result<(KeyHash, KeyRecord), ServiceError> {
        let hash = key.hash();
        match self.store.key(&hash)? {
            None => Err(ServiceError::UnknownKey),
            Some(r) if r.revoked_at.is_some() => Err(ServiceError::Revoked),
            Some(r) => Ok((hash, r)),
        }
    }
}

/// Checks an e-mail address (422): at most 254 characters and RFC 5322-valid.
fn parse_email(email: &str) -> Result<&str, ServiceError> {
    if email.len() <= 254 && email_address::EmailAddress::is_valid(email) {
        Ok(email)
    } else {
        Err(ServiceError::InvalidEmail)
    }
}

/// Normalises a domain (406).
fn parse_domain(domain: &str) -> Result<crate::domain::Domain, ServiceError> {
    crate::domain::normalize(domain).map_err(|_| ServiceError::InvalidDomain)
}
