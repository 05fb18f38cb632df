//! The durable store: API keys (by hash), the domains registered under each key, per-domain
//! state, and an audit trail.
//!
//! The types every backend shares live here (records, outcomes, [`StoreError`], the claim
//! caps); the embedded sled backend lives in [`sled`].

mod acme_record;
mod claim_caps;
mod due_mail;
mod error;
mod inventory;
mod outcomes;
pub mod records;
pub mod sled;

pub use self::sled::SledStore as Store;
pub use self::sled::durable::{DurabilityMode, FlushError, FlushStats, GroupCommit, Mark, Timing};
pub use acme_record::{AcmeKeyRecord, AcmeMapping, StoredEab};
pub use claim_caps::{CapExceeded, ClaimCaps};
pub use due_mail::DueMail;
pub use error::StoreError;
pub use inventory::{Holder, InventoryRow};
pub use outcomes::{AddOutcome, ClaimOutcome, LinkOutcome, OperatorConfirmOutcome, RequeueOutcome};
pub use records::{
    AuditEvent, AuditKind, BridgeError, BridgePhase, BridgeRecord, DcvProgress, DcvRecordType,
    DcvState, DomainRecord, KeyDomain, KeyRecord, LinkAction, LinkToken, MailJob, Record, UnixTime,
    rfc3339,
};
