//! The rules: one function per command, turning a parsed [`Request`] into a [`Reply`].
//!
//! Nothing here knows about bytes or sockets; the only I/O is the store. Checks run in the
//! order protocol.md §6 documents: field formats (422, 406), rate limits (429), the key
//! (401, 403), then the command. Every write waits for [`Store::commit`] before it says `ok`.

mod acme;
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
use crate::store::{AddOutcome, CapExceeded, ClaimCaps, KeyRecord, Store, StoreError, UnixTime};
pub use acme::AcmeHandOut;
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

    /// The error as a reply. Store details go to the log, not to the client; a write refused
    /// while the store does not take writes was logged once by the store, not per request.
    pub fn into_reply(self) -> Reply {
        match &self {
            ServiceError::Storage(StoreError::Flush(e)) => {
                tracing::debug!(error = %e, "storage failure");
            }
            ServiceError::Storage(e) => tracing::error!(error = %e, "storage failure"),
            _ => {}
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
    /// Present when `[sectigo.acme]` has `hand_out_eab = true`.
    acme: Option<AcmeHandOut>,
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
            acme: None,
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

    /// A new claim is on disk with its mail job: wake the sender.
    fn claimed(&self) {
        if let Some(c) = &self.confirmations {
            c.key_claimed();
        }
    }

    /// Reports the Sectigo bridge's state in `status`.
    pub fn with_bridge(mut self, bridge: Arc<BridgeHandle>) -> Self {
        self.bridge = Some(bridge);
        self
    }

    /// Answers `command acme` with the EAB of the key's ACME account.
    pub fn with_acme_hand_out(mut self, hand_out: AcmeHandOut) -> Self {
        self.acme = Some(hand_out);
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

    /// Runs one request. The reply waits until everything the request read or wrote is on
    /// disk (protocol.md §8): a change whose log write fails is undone, and a request that
    /// saw it answers `500` rather than show it.
    pub async fn handle(&self, request: Request, ctx: Context) -> Reply {
        if let Request::Ping = request {
            return Reply::ok("pong");
        }
        let since = self.store.mark();
        let result = match request {
            Request::Ping => Ok(Reply::ok("pong")),
            Request::Apikey { email } => apikey::run(self, email.as_deref(), ctx).await,
            Request::Claim { apikey, email } => claim::run(self, &apikey, &email, ctx).await,
            Request::Add { apikey, domain } => add::run(self, &apikey, &domain, ctx).await,
            Request::Status { apikey, domain } => status::run(self, &apikey, &domain).await,
            Request::List { apikey, offset } => list::run(self, &apikey, offset.as_deref()).await,
            Request::Remove { apikey, domain } => remove::run(self, &apikey, &domain, ctx).await,
            Request::Acme { apikey } => acme::run(self, &apikey).await,
        };
        let reply = result.unwrap_or_else(ServiceError::into_reply);
        match self.store.commit_since(since).await {
            Ok(()) => reply,
            Err(e) => ServiceError::Storage(e).into_reply(),
        }
    }

    /// Checks a key's format (422).
    fn parse_key(apikey: &str) -> Result<ApiKey, ServiceError> {
        ApiKey::parse(apikey).map_err(|_| ServiceError::InvalidApiKey)
    }

    /// Looks a key up: unknown is 401, revoked is 403.
    async fn authorize(&self, key: &ApiKey) -> Result<(KeyHash, KeyRecord), ServiceError> {
        authorize(&self.store, key).await
    }

    /// What `add` and `remove` check first, in the order the wire answers: the key's format
    /// (422), the domain (406), then the key itself (401, 403).
    async fn key_and_domain(
        &self,
        apikey: &str,
        domain: &str,
    ) -> Result<(KeyHash, crate::domain::Domain), ServiceError> {
        let key = Self::parse_key(apikey)?;
        let domain = parse_domain(domain)?;
        let (hash, _) = self.authorize(&key).await?;
        Ok((hash, domain))
    }
}

/// Looks a key up: unknown is 401, revoked is 403. The line protocol's commands and the admin
/// API's import both ask here, so they answer alike.
pub async fn authorize(store: &Store, key: &ApiKey) -> Result<(KeyHash, KeyRecord), ServiceError> {
    let hash = key.hash();
    match store.key(&hash).await? {
        None => Err(ServiceError::UnknownKey),
        Some(r) if r.revoked_at.is_some() => Err(ServiceError::Revoked),
        Some(r) => Ok((hash, r)),
    }
}

/// Checks a key's format (422), then looks it up ([`authorize`]).
pub async fn authorize_apikey(store: &Store, apikey: &str) -> Result<KeyHash, ServiceError> {
    let key = Service::parse_key(apikey)?;
    authorize(store, &key).await.map(|(hash, _)| hash)
}

/// Registers `domain` under an authorized key, not yet committed (the caller commits once for
/// everything it wrote). `command add` and the admin import both register through here.
pub async fn register(
    store: &Store,
    hash: &KeyHash,
    domain: &crate::domain::Domain,
    ctx: Context,
) -> Result<Registered, ServiceError> {
    match store.add_domain(hash, domain, ctx.peer, ctx.now).await? {
        AddOutcome::Added => Ok(Registered::Added),
        AddOutcome::AlreadyRegistered => Ok(Registered::AlreadyRegistered),
        // Revoked or gone between the lookup and the write.
        AddOutcome::UnknownKey => Err(ServiceError::UnknownKey),
    }
}

/// What a registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    Added,
    AlreadyRegistered,
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
pub fn parse_domain(domain: &str) -> Result<crate::domain::Domain, ServiceError> {
    crate::domain::normalize(domain).map_err(|_| ServiceError::InvalidDomain)
}
