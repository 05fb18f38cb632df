//! What the store's read-check-write operations did: one enum per operation, the same for
//! every backend, so that the service and the admin API answer alike whichever one runs.

use super::{CapExceeded, UnixTime};

/// What `claim` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The key is now bound to the e-mail (it may have been created by this claim).
    Claimed,
    /// The key does not exist, and the caller did not allow creating it.
    Unknown,
    /// The key was already bound to this e-mail.
    AlreadyClaimed,
    /// The key is bound to another e-mail.
    ClaimedByOther,
    /// The key was revoked.
    Revoked,
    /// A claim cap (KeyChest's abuse limits, `[claims]`) refused a new claim.
    Capped(CapExceeded),
}

/// What `add` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddOutcome {
    Added,
    AlreadyRegistered,
    /// The key does not exist (the caller checks first; this closes the gap between the
    /// check and the write).
    UnknownKey,
}

/// What following a confirmation link did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOutcome {
    /// The key is confirmed; `requeued` domains were waiting for it and go to Sectigo now.
    Confirmed { key_id: String, requeued: usize },
    /// The key is revoked.
    Revoked { key_id: String },
    /// No such link (or a confirm link used on the revoke route, or the reverse).
    Unknown,
    /// The link was used before.
    AlreadyUsed,
    /// The link is older than its validity.
    Expired,
    /// A confirm link for a key that was revoked meanwhile.
    KeyRevoked,
}

/// What an operator's `certline confirm` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorConfirmOutcome {
    /// The key is confirmed (`already`: it was before, at `confirmed_at`); `requeued`
    /// domains were waiting for it and go to Sectigo now.
    Confirmed {
        confirmed_at: UnixTime,
        already: bool,
        requeued: usize,
    },
    /// No such key.
    Unknown,
    /// The key is revoked; a revoked key cannot be confirmed.
    KeyRevoked,
}

/// What `requeue_domain` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequeueOutcome {
    /// The bridge record is `queued`, due now.
    Requeued,
    /// No key ever registered the domain.
    UnknownDomain,
    /// The bridge is not configured, so there is nothing to requeue.
    BridgeOff,
}
