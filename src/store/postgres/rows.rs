//! Rows ↔ the store's records.

use crate::apikey::KeyHash;
use crate::store::acme_record::StoredAcmeKeyRecord;
use crate::store::records::StoredBridgeRecord;
use crate::store::{AcmeKeyRecord, BridgePhase, BridgeRecord, KeyRecord, Record, StoreError};
use tokio_postgres::Row;
use tokio_postgres::types::Json;

/// The `keys` columns a [`KeyRecord`] is read from, in [`key_record`]'s order.
pub(super) const KEY_COLUMNS: &str =
    "created_at, creator_ip, email, claimed_at, confirmed_at, revoked_at, domain_count";

/// A [`KeyRecord`] from [`KEY_COLUMNS`] starting at column `at`.
pub(super) fn key_record(row: &Row, at: usize) -> Result<KeyRecord, StoreError> {
    let count: i64 = row.try_get(at + 6)?;
    Ok(KeyRecord {
        created_at: row.try_get(at)?,
        creator_ip: row.try_get(at + 1)?,
        email: row.try_get(at + 2)?,
        claimed_at: row.try_get(at + 3)?,
        confirmed_at: row.try_get(at + 4)?,
        revoked_at: row.try_get(at + 5)?,
        domain_count: count.max(0) as u64,
    })
}

pub(super) fn key_hash(row: &Row, at: usize) -> Result<KeyHash, StoreError> {
    let bytes: &[u8] = row.try_get(at)?;
    hash_from(bytes)
}

pub(super) fn hash_from(bytes: &[u8]) -> Result<KeyHash, StoreError> {
    <[u8; 32]>::try_from(bytes).map(KeyHash).map_err(|_| {
        StoreError::Pool(format!(
            "a stored key hash has {} bytes instead of 32; the table was changed outside certline",
            bytes.len()
        ))
    })
}

/// The versioned JSON of a bridge record (what the `record` column holds).
pub(super) fn bridge_json(record: &BridgeRecord) -> serde_json::Value {
    serde_json::to_value(record.clone().into_stored()).expect("a bridge record serialises to JSON")
}

pub(super) fn bridge_record(row: &Row, at: usize) -> Result<BridgeRecord, StoreError> {
    let Json(stored) = row.try_get::<_, Json<StoredBridgeRecord>>(at)?;
    Ok(BridgeRecord::from_stored(stored))
}

pub(super) fn acme_json(record: &AcmeKeyRecord) -> serde_json::Value {
    serde_json::to_value(record.clone().into_stored()).expect("an ACME record serialises to JSON")
}

pub(super) fn acme_record(row: &Row, at: usize) -> Result<AcmeKeyRecord, StoreError> {
    let Json(stored) = row.try_get::<_, Json<StoredAcmeKeyRecord>>(at)?;
    Ok(AcmeKeyRecord::from_stored(stored))
}

/// Every bridge phase, for reading the `phase` column back; [`phase_index`] fails to compile
/// when a phase is added and not listed here.
pub(super) const PHASES: [BridgePhase; 19] = [
    BridgePhase::Queued,
    BridgePhase::Lookup,
    BridgePhase::Create,
    BridgePhase::Details,
    BridgePhase::Monitoring,
    BridgePhase::DcvStatus,
    BridgePhase::Synced,
    BridgePhase::NotForwarded,
    BridgePhase::NotInSectigo,
    BridgePhase::AwaitingConfirmation,
    BridgePhase::Failed,
    BridgePhase::DcvStart,
    BridgePhase::DcvPublish,
    BridgePhase::DcvSubmit,
    BridgePhase::DcvWait,
    BridgePhase::DcvCleanup,
    BridgePhase::DcvActionRequired,
    BridgePhase::AwaitingDelegationApproval,
    BridgePhase::Suspended,
];

/// The position of `phase` in [`PHASES`]. Only the test calls it; it exists for its
/// exhaustive match, which stops the build when a phase is added and not listed.
#[cfg_attr(not(test), allow(dead_code))]
pub(super) fn phase_index(phase: BridgePhase) -> usize {
    match phase {
        BridgePhase::Queued => 0,
        BridgePhase::Lookup => 1,
        BridgePhase::Create => 2,
        BridgePhase::Details => 3,
        BridgePhase::Monitoring => 4,
        BridgePhase::DcvStatus => 5,
        BridgePhase::Synced => 6,
        BridgePhase::NotForwarded => 7,
        BridgePhase::NotInSectigo => 8,
        BridgePhase::AwaitingConfirmation => 9,
        BridgePhase::Failed => 10,
        BridgePhase::DcvStart => 11,
        BridgePhase::DcvPublish => 12,
        BridgePhase::DcvSubmit => 13,
        BridgePhase::DcvWait => 14,
        BridgePhase::DcvCleanup => 15,
        BridgePhase::DcvActionRequired => 16,
        BridgePhase::AwaitingDelegationApproval => 17,
        BridgePhase::Suspended => 18,
    }
}

/// The phase a `phase` column names.
pub(super) fn phase_named(name: &str) -> Option<BridgePhase> {
    PHASES.into_iter().find(|p| p.name() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_is_listed_once_in_its_place() {
        for (i, phase) in PHASES.into_iter().enumerate() {
            assert_eq!(phase_index(phase), i);
            assert_eq!(phase_named(phase.name()), Some(phase));
        }
    }
}
