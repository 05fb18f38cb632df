//! The audit trail: one event per change, in the same batch (log record) as the change, with
//! a sequence number that only ever grows; kept in a file of its own ([`super::audit_trail`]).

use super::{SledStore, WriteBatch};
use crate::apikey::KeyHash;
use crate::store::StoreError;
use crate::store::records::{AuditEvent, AuditKind, UnixTime};
use std::net::IpAddr;

impl SledStore {
    /// Appends an event that no client caused (the bridge's own actions) to the audit trail.
    /// The source address is unspecified and the key id is `-`.
    pub async fn record_event(&self, kind: AuditKind, now: UnixTime) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        self.audit_raw(
            &mut batch,
            now,
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            "-".to_owned(),
            kind,
        )?;
        self.write(batch)
    }

    /// Up to `limit` events of the audit trail after sequence number `after` (`None`: from
    /// the first), oldest first, each with its sequence number (pass the last one back as
    /// `after` for the next page). Read from the trail's file ([`super::audit_trail`]).
    pub async fn audit_events(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, AuditEvent)>, StoreError> {
        self.commits.audit_trail().events(after, limit)
    }

    pub(super) fn audit(
        &self,
        batch: &mut WriteBatch,
        at: UnixTime,
        ip: IpAddr,
        hash: &KeyHash,
        kind: AuditKind,
    ) -> Result<(), StoreError> {
        self.audit_raw(batch, at, ip, hash.id(), kind)
    }

    fn audit_raw(
        &self,
        batch: &mut WriteBatch,
        at: UnixTime,
        ip: IpAddr,
        key_id: String,
        kind: AuditKind,
    ) -> Result<(), StoreError> {
        let event = AuditEvent {
            at,
            ip,
            key_id,
            kind,
        };
        // Numbered when the batch is applied; in the trail's file and the log once the
        // batch is on disk (see `audit_trail`).
        batch.audit(event);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{key_with_domains, open};
    use super::*;

    /// The trail pages by sequence number: a page starts after the last one it was given,
    /// oldest first, and every event comes once.
    #[tokio::test]
    async fn the_audit_trail_pages_after_a_sequence_number() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        key_with_domains(&store, &["a.org", "b.org", "c.org", "d.org"]).await;
        let all = store.audit_events(None, usize::MAX).await.unwrap();
        assert_eq!(all.len(), 5);
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "oldest first");
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = store.audit_events(after, 2).await.unwrap();
            assert!(page.len() <= 2);
            let Some(&(last, _)) = page.last() else { break };
            after = Some(last);
            paged.extend(page);
        }
        assert_eq!(paged, all);
        assert_eq!(paged[0].1.kind, AuditKind::KeyCreated);
        assert_eq!(
            paged[4].1.kind,
            AuditKind::DomainAdded {
                domain: "d.org".into()
            }
        );
    }
}
