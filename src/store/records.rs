//! The records kept in the store, as versioned serde types.
//!
//! Records are encoded with postcard (compact, not self-describing), wrapped in a
//! per-record-type enum whose variant index is the schema version. A new field means a new
//! variant and a conversion in `into_current`, never a silent reinterpretation of old bytes.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::net::IpAddr;

/// Seconds since the Unix epoch, UTC.
pub type UnixTime = i64;

/// A stored time as people and scripts read it: `2026-11-23T10:00:00Z` (RFC 3339, UTC,
/// seconds).
pub fn rfc3339(t: UnixTime) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What the store knows about one API key (keyed by its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub created_at: UnixTime,
    pub creator_ip: IpAddr,
    pub email: Option<String>,
    pub claimed_at: Option<UnixTime>,
    pub confirmed_at: Option<UnixTime>,
    pub revoked_at: Option<UnixTime>,
    /// How many domains are registered under this key; kept with every add/remove so `list`
    /// can report a total without a scan.
    pub domain_count: u64,
}

/// One domain registered under one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDomain {
    pub added_at: UnixTime,
}

/// What the store knows about a domain, whichever keys registered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRecord {
    pub first_added_at: UnixTime,
}

/// One entry of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub at: UnixTime,
    pub ip: IpAddr,
    /// The key id (first 12 hex digits of the key's hash).
    pub key_id: String,
    pub kind: AuditKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditKind {
    KeyCreated,
    KeyClaimed {
        email: String,
    },
    KeyRevoked,
    DomainAdded {
        domain: String,
    },
    DomainRemoved {
        domain: String,
    },
    /// A step of the Sectigo bridge that changes something outside certline (a create, a
    /// DCV submission, a DNS hook run), with its outcome.
    Bridge {
        domain: String,
        step: String,
        detail: String,
    },
    // New variants go at the end: postcard stores the variant index.
    /// The key's owner followed the confirmation link (KeyChest's `confirm-apikey`).
    KeyConfirmed,
    /// An operator sent the domain's bridge record back to `queued` (through the admin API;
    /// the event's key id is all zeros, since no key asked for it).
    DomainRequeued {
        domain: String,
    },
}

impl AuditKind {
    /// A short name for logs (KeyChest's event names where it had one).
    pub fn name(&self) -> &'static str {
        match self {
            AuditKind::KeyCreated => "new-apikey",
            AuditKind::KeyClaimed { .. } => "claim-apikey",
            AuditKind::KeyRevoked => "revoke-apikey",
            AuditKind::DomainAdded { .. } => "new-domain",
            AuditKind::DomainRemoved { .. } => "remove-domain",
            AuditKind::Bridge { .. } => "bridge",
            AuditKind::KeyConfirmed => "confirm-apikey",
            AuditKind::DomainRequeued { .. } => "requeue-domain",
        }
    }
}

/// A record type with a versioned on-disk form.
pub trait Record: Sized {
    /// The enum of all on-disk versions.
    type Stored: Serialize + DeserializeOwned;
    fn into_stored(self) -> Self::Stored;
    fn from_stored(stored: Self::Stored) -> Self;

    fn encode(&self) -> Vec<u8>
    where
        Self: Clone,
    {
        postcard::to_allocvec(&self.clone().into_stored())
            .expect("serialising a record to memory cannot fail")
    }

    fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes).map(Self::from_stored)
    }
}

macro_rules! versioned {
    ($record:ident, $stored:ident) => {
        #[derive(Serialize, Deserialize)]
        pub enum $stored {
            V1($record),
        }
        impl Record for $record {
            type Stored = $stored;
            fn into_stored(self) -> $stored {
                $stored::V1(self)
            }
            fn from_stored(stored: $stored) -> Self {
                match stored {
                    $stored::V1(r) => r,
                }
            }
        }
    };
}

versioned!(KeyRecord, StoredKeyRecord);
versioned!(KeyDomain, StoredKeyDomain);
versioned!(DomainRecord, StoredDomainRecord);
versioned!(AuditEvent, StoredAuditEvent);
versioned!(MailJob, StoredMailJob);

/// A claim confirmation e-mail still to be sent (the mail outbox, prefix `Q`). Written in the
/// claim's own batch, so an acknowledged claim always gets its mail, even across a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailJob {
    /// The address that claimed the key.
    pub email: String,
    /// Where the claim came from (said in the mail).
    pub ip: IpAddr,
    /// When the key was claimed.
    pub claimed_at: UnixTime,
    /// Failed sends so far.
    pub attempts: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_carry_their_version() {
        let r = KeyRecord {
            created_at: 1,
            creator_ip: "127.0.0.1".parse().unwrap(),
            email: Some("a@b.org".into()),
            claimed_at: Some(2),
            confirmed_at: None,
            revoked_at: None,
            domain_count: 3,
        };
        let bytes = r.encode();
        assert_eq!(bytes[0], 0, "variant index 0 is version 1");
        assert_eq!(KeyRecord::decode(&bytes).unwrap(), r);
        assert!(KeyRecord::decode(&[7, 1, 2]).is_err());
    }

    #[test]
    fn a_version_1_bridge_record_reads_with_typed_dcv_fields() {
        let v1 = StoredBridgeRecord::V1(BridgeRecordV1 {
            phase: BridgePhase::Synced,
            next_attempt_at: Some(5),
            attempts: 0,
            sectigo_id: Some(400),
            created_by_certline: true,
            dcv_status: Some("VALIDATED".into()),
            dcv_expires: Some("2027-05-22".into()),
            ct_monitoring: Some(true),
            checked_at: Some(4),
            last_error: None,
            key_confirmed: true,
            dcv: None,
        });
        let bytes = postcard::to_allocvec(&v1).unwrap();
        let r = BridgeRecord::decode(&bytes).unwrap();
        assert_eq!(r.dcv_status, Some(DcvState::Validated));
        assert_eq!(r.dcv_expires, chrono::NaiveDate::from_ymd_opt(2027, 5, 22));
        assert_eq!(r.sectigo_id, Some(400));
        assert!(!r.waiting_on_credentials);
        let again = BridgeRecord::decode(&r.encode()).unwrap();
        assert_eq!(again, r);
        assert_eq!(r.encode()[0], 1, "written as version 2");
    }
}

/// Where a domain stands with the Sectigo bridge. Written after every bridge step, so a
/// restart resumes at the step it stopped at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeRecord {
    /// The step to run next, or a resting state.
    pub phase: BridgePhase,
    /// When the worker should next look at this domain (`None`: never, until requeued).
    pub next_attempt_at: Option<UnixTime>,
    /// Consecutive transient failures of the current step (drives the backoff).
    pub attempts: u32,
    /// Sectigo's id for the domain, once known.
    pub sectigo_id: Option<u64>,
    /// certline created the domain in Sectigo (rather than finding it there).
    pub created_by_certline: bool,
    /// DCV status as Sectigo reported it (for a subdomain: its validation domain's).
    pub dcv_status: Option<DcvState>,
    /// DCV expiry date.
    pub dcv_expires: Option<chrono::NaiveDate>,
    /// CT-log monitoring as last seen or set.
    pub ct_monitoring: Option<bool>,
    /// When the domain last completed a full sync.
    pub checked_at: Option<UnixTime>,
    /// The last failure, kept until a later sync succeeds.
    pub last_error: Option<BridgeError>,
    /// At least one key holding the domain is confirmed (for the require-confirmed policy).
    pub key_confirmed: bool,
    /// A DCV run in progress (DNS validation driven by certline).
    pub dcv: Option<DcvProgress>,
    /// The name Sectigo validates for this domain (its registrable domain, or an operator's
    /// `dcv_domains` entry); `None` until the bridge has worked it out.
    pub dcv_domain: Option<String>,
    /// Parked by a 401: due again as soon as certline has (new) credentials that work.
    pub waiting_on_credentials: bool,
    /// Rounds of "create says -700 exists, lookup finds nothing" in a row (bounded).
    pub exists_rounds: u32,
}

/// DCV status of a domain, as Sectigo's wire vocabulary names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DcvState {
    NotValidated,
    Validated,
    Expired,
    /// A value certline does not know yet, kept verbatim.
    Other(String),
}

impl DcvState {
    /// The wire value (`VALIDATED`, ...), as `status` and the inventory show it.
    pub fn as_str(&self) -> &str {
        match self {
            DcvState::NotValidated => "NOT_VALIDATED",
            DcvState::Validated => "VALIDATED",
            DcvState::Expired => "EXPIRED",
            DcvState::Other(s) => s,
        }
    }

    /// From a wire value; unknown values are kept as [`DcvState::Other`].
    pub fn parse(s: &str) -> Self {
        match s {
            "NOT_VALIDATED" => DcvState::NotValidated,
            "VALIDATED" => DcvState::Validated,
            "EXPIRED" => DcvState::Expired,
            other => DcvState::Other(other.to_owned()),
        }
    }
}

/// The first on-disk form of [`BridgeRecord`] (DCV status and expiry as strings, no DCV
/// domain, no credential or -700 bookkeeping); read, never written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BridgeRecordV1 {
    phase: BridgePhase,
    next_attempt_at: Option<UnixTime>,
    attempts: u32,
    sectigo_id: Option<u64>,
    created_by_certline: bool,
    dcv_status: Option<String>,
    dcv_expires: Option<String>,
    ct_monitoring: Option<bool>,
    checked_at: Option<UnixTime>,
    last_error: Option<BridgeError>,
    key_confirmed: bool,
    dcv: Option<DcvProgress>,
}

impl From<BridgeRecordV1> for BridgeRecord {
    fn from(v: BridgeRecordV1) -> Self {
        BridgeRecord {
            phase: v.phase,
            next_attempt_at: v.next_attempt_at,
            attempts: v.attempts,
            sectigo_id: v.sectigo_id,
            created_by_certline: v.created_by_certline,
            dcv_status: v.dcv_status.as_deref().map(DcvState::parse),
            dcv_expires: v.dcv_expires.as_deref().and_then(|d| d.parse().ok()),
            ct_monitoring: v.ct_monitoring,
            checked_at: v.checked_at,
            last_error: v.last_error,
            key_confirmed: v.key_confirmed,
            dcv: v.dcv,
            dcv_domain: None,
            waiting_on_credentials: false,
            exists_rounds: 0,
        }
    }
}

/// The on-disk versions of [`BridgeRecord`].
#[derive(Serialize, Deserialize)]
pub enum StoredBridgeRecord {
    V1(BridgeRecordV1),
    V2(BridgeRecord),
}

impl Record for BridgeRecord {
    type Stored = StoredBridgeRecord;
    fn into_stored(self) -> StoredBridgeRecord {
        StoredBridgeRecord::V2(self)
    }
    fn from_stored(stored: StoredBridgeRecord) -> Self {
        match stored {
            StoredBridgeRecord::V1(r) => r.into(),
            StoredBridgeRecord::V2(r) => r,
        }
    }
}

/// A DNS DCV run: the record Sectigo asked for and how far certline got with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DcvProgress {
    /// `CNAME` or `TXT`.
    pub record_type: DcvRecordType,
    /// The record's name, as Sectigo gave it (with its trailing dot).
    pub host: Option<String>,
    /// The record's value, byte for byte as Sectigo gave it.
    pub point: Option<String>,
    /// The DNS hook (or the operator) published the record.
    pub published: bool,
    /// When certline submitted the order to Sectigo.
    pub submitted_at: Option<UnixTime>,
    /// When this run started.
    pub started_at: UnixTime,
}

impl DcvProgress {
    /// A run that has just begun.
    pub fn new(record_type: DcvRecordType, now: UnixTime) -> Self {
        Self {
            record_type,
            host: None,
            point: None,
            published: false,
            submitted_at: None,
            started_at: now,
        }
    }
}

/// The DNS record type a DCV run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DcvRecordType {
    Cname,
    Txt,
}

impl DcvRecordType {
    /// `CNAME` or `TXT`, as DNS spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            DcvRecordType::Cname => "CNAME",
            DcvRecordType::Txt => "TXT",
        }
    }
}

/// The bridge's state machine (ARCHITECTURE.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BridgePhase {
    /// Registered; nothing sent yet.
    Queued,
    /// Find the domain in Sectigo's inventory by name.
    Lookup,
    /// Create it (policy allowed; lookup found nothing).
    Create,
    /// Read its details (delegations, CT monitoring, DCV fields).
    Details,
    /// Switch CT-log monitoring on.
    Monitoring,
    /// Read its DCV status.
    DcvStatus,
    /// Everything is in place; rechecked on a schedule.
    Synced,
    /// Outside the operator's allowed suffixes (or an IP literal): never sent to Sectigo.
    NotForwarded,
    /// Not in Sectigo, and the policy does not allow creating it.
    NotInSectigo,
    /// The policy wants a confirmed key first.
    AwaitingConfirmation,
    /// Sectigo refused a step for good; `last_error` says why.
    Failed,
    /// DCV (CNAME): ask Sectigo which record to publish.
    DcvStart,
    /// DCV: publish the record through the DNS hook.
    DcvPublish,
    /// DCV: tell Sectigo to check (CNAME after publishing; TXT first, which names the record).
    DcvSubmit,
    /// DCV: poll Sectigo until the domain is validated.
    DcvWait,
    /// DCV: remove the published record through the hook.
    DcvCleanup,
    /// DCV needs a person: no DNS hook is configured; `status` shows the record to publish.
    DcvActionRequired,
    // New variants go at the end: postcard stores the variant index.
    /// The domain's delegation to the organisation waits for an MRAO's approval in SCM
    /// (`delegationStatus` `REQUESTED`); rechecked on a schedule.
    AwaitingDelegationApproval,
    /// The domain is suspended (inactive) in SCM; rechecked on a schedule.
    Suspended,
}

impl BridgePhase {
    /// The name shown by `status` and the inventory.
    pub fn name(self) -> &'static str {
        match self {
            BridgePhase::Queued => "queued",
            BridgePhase::Lookup => "lookup",
            BridgePhase::Create => "create",
            BridgePhase::Details => "details",
            BridgePhase::Monitoring => "monitoring",
            BridgePhase::DcvStatus => "dcv_status",
            BridgePhase::Synced => "synced",
            BridgePhase::NotForwarded => "not_forwarded",
            BridgePhase::NotInSectigo => "not_in_sectigo",
            BridgePhase::AwaitingConfirmation => "awaiting_confirmation",
            BridgePhase::Failed => "failed",
            BridgePhase::DcvStart => "dcv_start",
            BridgePhase::DcvPublish => "dcv_publish",
            BridgePhase::DcvSubmit => "dcv_submit",
            BridgePhase::DcvWait => "dcv_wait",
            BridgePhase::DcvCleanup => "dcv_cleanup",
            BridgePhase::DcvActionRequired => "dcv_action_required",
            BridgePhase::AwaitingDelegationApproval => "awaiting_delegation_approval",
            BridgePhase::Suspended => "suspended",
        }
    }
}

/// A failed bridge step, as Sectigo (or the network) reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeError {
    /// The phase that failed.
    pub step: BridgePhase,
    /// Sectigo's error code (`-732`, …), when it gave one.
    pub code: Option<i64>,
    /// Sectigo's description, or what went wrong on the way.
    pub text: String,
    /// Whether the step will be retried.
    pub transient: bool,
    pub at: UnixTime,
}

impl BridgeRecord {
    /// A freshly registered domain, due now.
    pub fn queued(now: UnixTime, key_confirmed: bool) -> Self {
        Self {
            phase: BridgePhase::Queued,
            next_attempt_at: Some(now),
            attempts: 0,
            sectigo_id: None,
            created_by_certline: false,
            dcv_status: None,
            dcv_expires: None,
            ct_monitoring: None,
            checked_at: None,
            last_error: None,
            key_confirmed,
            dcv: None,
            dcv_domain: None,
            waiting_on_credentials: false,
            exists_rounds: 0,
        }
    }
}

/// What a single-use link in a claim confirmation e-mail does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkAction {
    /// Confirm the key: its domains may then be forwarded under `require_confirmed_key`.
    Confirm,
    /// Revoke the key: the line protocol answers `403` for it from then on.
    Revoke,
}

/// A link token, stored under the SHA-256 of the token (the token itself is only in the
/// e-mail), so a copy of the database cannot be used to confirm or revoke anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkToken {
    /// The SHA-256 of the API key the link acts on.
    pub key_hash: [u8; 32],
    pub action: LinkAction,
    pub created_at: UnixTime,
    /// The link works until (not including) this time.
    pub expires_at: UnixTime,
    /// Set when the link is used: links work once.
    pub used_at: Option<UnixTime>,
}

versioned!(LinkToken, StoredLinkToken);
