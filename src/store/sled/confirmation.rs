//! Confirming a key, by its claim e-mail's link ([`SledStore::use_link`]) or by the operator
//! ([`SledStore::confirm_key`]): the key's record says so, and the bridge records of its
//! domains learn that a confirmed key holds them (the ones parked awaiting confirmation go
//! back to the queue) in the same batch.

use super::bridge_state::mark_key_confirmed;
use super::keyspace::{api_key, bridge, key_domain};
use super::{SledStore, WriteBatch};
use crate::apikey::KeyHash;
use crate::store::records::{AuditKind, BridgeRecord, KeyRecord, Record, UnixTime};
use crate::store::{OperatorConfirmOutcome, StoreError};
use std::collections::HashSet;
use std::net::IpAddr;

impl SledStore {
    /// An operator confirms a key by hand (`certline confirm`), for owners whose claim e-mail
    /// never arrived or keys that were never claimed. Exactly what the confirm link does,
    /// audited the same way (`confirm-apikey`, with the operator's address): the key's waiting
    /// domains go back to `queued`, due now. A revoked key stays revoked. Commit before
    /// telling the operator.
    pub async fn confirm_key(
        &self,
        hash: &KeyHash,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<OperatorConfirmOutcome, StoreError> {
        let _guard = self.lock();
        let Some(key) = self.read_key(hash)? else {
            return Ok(OperatorConfirmOutcome::Unknown);
        };
        if key.revoked_at.is_some() {
            return Ok(OperatorConfirmOutcome::KeyRevoked);
        }
        let already = key.confirmed_at;
        let mut batch = WriteBatch::default();
        let requeued = self.confirm_into(&mut batch, hash, key, ip, now)?;
        self.write(batch)?;
        if requeued > 0 {
            self.bridge_wakeup.notify_one();
        }
        Ok(OperatorConfirmOutcome::Confirmed {
            confirmed_at: already.unwrap_or(now),
            already: already.is_some(),
            requeued,
        })
    }

    /// Adds to `batch` the confirmation of an unrevoked key (unless it is confirmed already)
    /// with its audit event, and the release of its waiting domains. Returns how many
    /// domains were requeued.
    pub(super) fn confirm_into(
        &self,
        batch: &mut WriteBatch,
        hash: &KeyHash,
        mut key: KeyRecord,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<usize, StoreError> {
        if key.confirmed_at.is_none() {
            key.confirmed_at = Some(now);
            batch.insert(api_key::encode(hash), key.encode());
            self.audit(batch, now, ip, hash, AuditKind::KeyConfirmed)?;
        }
        self.confirm_bridge_records(batch, hash, now)
    }

    /// The host names (no port) registered under at least one confirmed, unrevoked key: what
    /// `key_confirmed` should say for each domain. Two scans; for start-up.
    pub(super) fn hosts_of_confirmed_keys(&self) -> Result<HashSet<String>, StoreError> {
        let mut hosts = HashSet::new();
        for entry in self.db.scan_prefix([api_key::PREFIX]) {
            let (k, v) = entry?;
            let r = KeyRecord::decode(&v)?;
            if r.confirmed_at.is_none() || r.revoked_at.is_some() {
                continue;
            }
            let Some(hash) = api_key::decode(&k) else {
                continue;
            };
            for entry in self.db.scan_prefix(key_domain::prefix(&hash)) {
                let (k, _) = entry?;
                if let Ok(domain) = crate::domain::normalize(&key_domain::name(&k)) {
                    hosts.insert(domain.host().to_owned());
                }
            }
        }
        Ok(hosts)
    }

    /// Adds to `batch` the bridge changes for a newly confirmed key (see [`SledStore::use_link`]).
    /// Returns how many domains were requeued.
    fn confirm_bridge_records(
        &self,
        batch: &mut WriteBatch,
        hash: &KeyHash,
        now: UnixTime,
    ) -> Result<usize, StoreError> {
        let mut hosts = HashSet::new();
        for entry in self.db.scan_prefix(key_domain::prefix(hash)) {
            let (k, _) = entry?;
            if let Ok(domain) = crate::domain::normalize(&key_domain::name(&k)) {
                hosts.insert(domain.host().to_owned());
            }
        }
        let mut requeued = 0;
        for host in hosts {
            if let Some(record) = self.get::<BridgeRecord>(&bridge::encode(&host))? {
                requeued += usize::from(mark_key_confirmed(batch, &host, record, now));
            }
        }
        Ok(requeued)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{IP, audit_trail, open};
    use super::*;
    use crate::apikey::ApiKey;
    use crate::store::ClaimCaps;

    #[tokio::test]
    async fn a_confirmed_key_adding_a_waiting_domain_releases_it() {
        use crate::domain::normalize;
        use crate::store::BridgePhase;
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.enable_bridge();
        let ip: IpAddr = IP.parse().unwrap();
        let (waiting, confirmed) = (ApiKey::generate(), ApiKey::generate());
        for key in [&waiting, &confirmed] {
            store
                .create_key(&key.hash(), None, &ClaimCaps::default(), ip, 0)
                .await
                .unwrap();
        }
        let domain = normalize("www.x.org").unwrap();
        store
            .add_domain(&waiting.hash(), &domain, ip, 0)
            .await
            .unwrap();
        let mut parked = store.bridge("www.x.org").await.unwrap().unwrap();
        parked.phase = BridgePhase::AwaitingConfirmation;
        parked.next_attempt_at = None;
        parked.sectigo_id = Some(396);
        store.save_bridge("www.x.org", &parked).await.unwrap();
        assert!(
            store
                .due_bridge_jobs(i64::MAX, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let mut record = store.key(&confirmed.hash()).await.unwrap().unwrap();
        record.confirmed_at = Some(1);
        store
            .db
            .insert(api_key::encode(&confirmed.hash()), record.encode())
            .unwrap();
        store
            .add_domain(&confirmed.hash(), &domain, ip, 7)
            .await
            .unwrap();
        let released = store.bridge("www.x.org").await.unwrap().unwrap();
        assert!(released.key_confirmed);
        assert_eq!(released.phase, BridgePhase::Queued);
        assert_eq!(released.next_attempt_at, Some(7));
        assert_eq!(released.sectigo_id, Some(396), "what was known is kept");
        assert_eq!(store.due_bridge_jobs(i64::MAX, 10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_operator_confirms_a_key_like_its_link_would() {
        use crate::domain::normalize;
        use crate::store::BridgePhase;
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.enable_bridge();
        let ip: IpAddr = IP.parse().unwrap();
        let operator: IpAddr = "127.0.0.1".parse().unwrap();
        let (key, revoked) = (ApiKey::generate(), ApiKey::generate());
        for k in [&key, &revoked] {
            store
                .create_key(&k.hash(), None, &ClaimCaps::default(), ip, 0)
                .await
                .unwrap();
        }
        store
            .add_domain(&key.hash(), &normalize("www.x.org").unwrap(), ip, 0)
            .await
            .unwrap();
        let mut parked = store.bridge("www.x.org").await.unwrap().unwrap();
        parked.phase = BridgePhase::AwaitingConfirmation;
        parked.next_attempt_at = None;
        store.save_bridge("www.x.org", &parked).await.unwrap();
        assert!(
            store
                .due_bridge_jobs(i64::MAX, 10)
                .await
                .unwrap()
                .is_empty()
        );

        assert_eq!(
            store.confirm_key(&key.hash(), operator, 40).await.unwrap(),
            OperatorConfirmOutcome::Confirmed {
                confirmed_at: 40,
                already: false,
                requeued: 1
            }
        );
        let released = store.bridge("www.x.org").await.unwrap().unwrap();
        assert_eq!(released.phase, BridgePhase::Queued);
        assert!(released.key_confirmed);
        assert_eq!(store.due_bridge_jobs(i64::MAX, 10).await.unwrap().len(), 1);
        let audit = audit_trail(&store).await;
        let event = audit.last().unwrap();
        assert_eq!(event.kind, AuditKind::KeyConfirmed);
        assert_eq!(event.ip, operator);
        assert_eq!(event.key_id, key.hash().id());

        assert_eq!(
            store.confirm_key(&key.hash(), operator, 50).await.unwrap(),
            OperatorConfirmOutcome::Confirmed {
                confirmed_at: 40,
                already: true,
                requeued: 0
            },
            "a second confirmation changes nothing"
        );
        assert_eq!(audit_trail(&store).await.len(), audit.len());

        store
            .revoke_key(&revoked.hash(), operator, 60)
            .await
            .unwrap();
        assert_eq!(
            store
                .confirm_key(&revoked.hash(), operator, 61)
                .await
                .unwrap(),
            OperatorConfirmOutcome::KeyRevoked
        );
        assert_eq!(
            store
                .key(&revoked.hash())
                .await
                .unwrap()
                .unwrap()
                .confirmed_at,
            None
        );
        assert_eq!(
            store
                .confirm_key(&ApiKey::generate().hash(), operator, 62)
                .await
                .unwrap(),
            OperatorConfirmOutcome::Unknown
        );
    }

    #[tokio::test]
    async fn the_bridge_backfill_knows_which_domains_have_a_confirmed_key() {
        use crate::domain::normalize;
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let ip: IpAddr = IP.parse().unwrap();
        let (confirmed, other) = (ApiKey::generate(), ApiKey::generate());
        for (key, domain) in [(&confirmed, "a.x.org:8443"), (&other, "b.x.org")] {
            store
                .create_key(&key.hash(), None, &ClaimCaps::default(), ip, 0)
                .await
                .unwrap();
            store
                .add_domain(&key.hash(), &normalize(domain).unwrap(), ip, 0)
                .await
                .unwrap();
        }
        let mut record = store.key(&confirmed.hash()).await.unwrap().unwrap();
        record.confirmed_at = Some(1);
        store
            .db
            .insert(api_key::encode(&confirmed.hash()), record.encode())
            .unwrap();
        // Registered while the bridge was off; now it starts.
        store.enable_bridge();
        assert_eq!(store.backfill_bridge(10).await.unwrap(), 2);
        assert!(
            store
                .bridge("a.x.org")
                .await
                .unwrap()
                .unwrap()
                .key_confirmed
        );
        assert!(
            !store
                .bridge("b.x.org")
                .await
                .unwrap()
                .unwrap()
                .key_confirmed
        );
    }
}
