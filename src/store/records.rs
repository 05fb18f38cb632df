//! The records kept in the store, as versioned serde types.
//!
//! Records are encoded with postcard (compact, not self-describing), wrapped in a
//! per-record-type enum whose variant index is the schema version. A new field means a new
//! variant and a conversion in `into_current`, never a silent reinterpretation of old bytes.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::net::IpAddr;

/// Seconds since the Unix epoch, UTC.
pub type UnixTime = i64;

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
    KeyClaimed { email: String },
    KeyRevoked,
    DomainAdded { domain: String },
    DomainRemoved { domain: String },
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
}
