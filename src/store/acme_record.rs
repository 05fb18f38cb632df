//! A key's SCM ACME account and its domains' mapping: the record the ACME worker keeps per
//! API key, the same for every backend.

use super::records::{Record, UnixTime};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where one of a key's domains stands with its ACME account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AcmeMapping {
    /// Registered, but not eligible yet (not synced, DCV not validated, key not confirmed),
    /// or eligible and not mapped yet.
    Pending,
    /// In the account: the host can get certificates for it.
    Mapped,
    /// SCM refused it (`notAddedDomains`, or an error); tried again later.
    Failed(String),
}

impl AcmeMapping {
    /// The `acme=` value of `status`.
    pub fn name(&self) -> &'static str {
        match self {
            AcmeMapping::Pending => "pending",
            AcmeMapping::Mapped => "mapped",
            AcmeMapping::Failed(_) => "failed",
        }
    }
}

/// The EAB pair of a key's account, kept only when `hand_out_eab` is on.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEab {
    pub kid: String,
    pub hmac: String,
}

impl std::fmt::Debug for StoredEab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredEab")
            .field("kid", &self.kid)
            .field("hmac", &"***")
            .finish()
    }
}

/// A key's ACME account and its domains' mapping state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeKeyRecord {
    /// SCM's numeric account id, once created or found.
    pub account_id: Option<u64>,
    /// The account's EAB, when certline hands it out.
    pub eab: Option<StoredEab>,
    /// Host name → mapping state, for every host the key registered.
    pub domains: BTreeMap<String, AcmeMapping>,
    /// When the worker should look at the key next (`None`: not until touched).
    pub next_attempt_at: Option<UnixTime>,
    /// Consecutive transient failures (drives the backoff).
    pub attempts: u32,
    /// The last failure, kept until a pass succeeds.
    pub last_error: Option<String>,
    /// The key was revoked and retired in SCM: its own account deleted (`per_key`), or its
    /// names taken out of the shared account (`shared`). Nothing more to do for it.
    pub account_deleted: bool,
    /// Bumped by every touch of the key (an add, a remove, a revocation, a followed link):
    /// lets a save by the worker see that the key changed while it worked, so the change is
    /// not lost.
    pub touches: u64,
}

#[derive(Serialize, Deserialize)]
pub enum StoredAcmeKeyRecord {
    V1(AcmeKeyRecord),
}

impl Record for AcmeKeyRecord {
    type Stored = StoredAcmeKeyRecord;
    fn into_stored(self) -> StoredAcmeKeyRecord {
        StoredAcmeKeyRecord::V1(self)
    }
    fn from_stored(stored: StoredAcmeKeyRecord) -> Self {
        match stored {
            StoredAcmeKeyRecord::V1(r) => r,
        }
    }
}
