//! Which of a key's domains may go into its ACME account (ARCHITECTURE.md §5a): synced
//! into SCM, inside the operator's policy, registered by a confirmed key where
//! `require_confirmed_key` says so, and DCV validated. Pure functions over the bridge's
//! record, so they are tested without a network.

use crate::store::{BridgePhase, BridgeRecord, DcvState};

/// Why a domain is not (yet) eligible; shown in the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotEligible {
    /// The bridge has not brought it into SCM (queued, looking up, creating, not in SCM).
    NotSynced,
    /// Outside `allowed_suffixes`, or an IP literal.
    OutsidePolicy,
    /// `require_confirmed_key` and this key's e-mail is not confirmed.
    KeyNotConfirmed,
    /// SCM does not report the domain's DCV as validated.
    DcvNotValidated,
}

/// Is the domain's DCV validated? The one place that decides it, so that it can follow the
/// domain to its registrable "validation domain" once the bridge validates there.
pub fn dcv_validated(record: &BridgeRecord) -> bool {
    // The bridge keeps on each host the state of its validation domain (the registrable
    // domain, or the operator's dcv_domains entry), so this already follows it.
    record.dcv_status == Some(DcvState::Validated)
}

/// Whether a domain with bridge state `record` may be mapped for a key that is
/// `key_confirmed`.
pub fn check(
    record: Option<&BridgeRecord>,
    key_confirmed: bool,
    require_confirmed_key: bool,
) -> Result<(), NotEligible> {
    let Some(r) = record else {
        return Err(NotEligible::NotSynced);
    };
    match r.phase {
        BridgePhase::NotForwarded => return Err(NotEligible::OutsidePolicy),
        BridgePhase::AwaitingConfirmation => return Err(NotEligible::KeyNotConfirmed),
        BridgePhase::Queued
        | BridgePhase::Lookup
        | BridgePhase::Create
        | BridgePhase::NotInSectigo => return Err(NotEligible::NotSynced),
        _ if r.sectigo_id.is_none() => return Err(NotEligible::NotSynced),
        _ => {}
    }
    if require_confirmed_key && !key_confirmed {
        return Err(NotEligible::KeyNotConfirmed);
    }
    if !dcv_validated(r) {
        return Err(NotEligible::DcvNotValidated);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synced(dcv: Option<&str>) -> BridgeRecord {
        let mut r = BridgeRecord::queued(0, true);
        r.phase = BridgePhase::Synced;
        r.sectigo_id = Some(9);
        r.dcv_status = dcv.map(DcvState::parse);
        r
    }

    #[test]
    fn synced_validated_and_confirmed_is_eligible() {
        let r = synced(Some("VALIDATED"));
        assert_eq!(check(Some(&r), true, true), Ok(()));
        assert_eq!(check(Some(&r), false, false), Ok(()));
        // A recheck in progress keeps an eligible domain eligible.
        let mut busy = r.clone();
        busy.phase = BridgePhase::Details;
        assert_eq!(check(Some(&busy), true, true), Ok(()));
    }

    #[test]
    fn each_missing_condition_is_named() {
        assert_eq!(check(None, true, true), Err(NotEligible::NotSynced));
        let r = synced(Some("VALIDATED"));
        assert_eq!(
            check(Some(&r), false, true),
            Err(NotEligible::KeyNotConfirmed)
        );
        for dcv in [None, Some("NOT_VALIDATED"), Some("EXPIRED")] {
            assert_eq!(
                check(Some(&synced(dcv)), true, true),
                Err(NotEligible::DcvNotValidated)
            );
        }
        let mut outside = synced(Some("VALIDATED"));
        outside.phase = BridgePhase::NotForwarded;
        assert_eq!(
            check(Some(&outside), true, true),
            Err(NotEligible::OutsidePolicy)
        );
        let mut absent = synced(Some("VALIDATED"));
        absent.phase = BridgePhase::NotInSectigo;
        assert_eq!(
            check(Some(&absent), true, true),
            Err(NotEligible::NotSynced)
        );
        let mut no_id = synced(Some("VALIDATED"));
        no_id.sectigo_id = None;
        no_id.phase = BridgePhase::Failed;
        assert_eq!(check(Some(&no_id), true, true), Err(NotEligible::NotSynced));
    }
}
