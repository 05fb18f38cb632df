//! Claim bookkeeping, the KeyChest way (reference/keychest.md §2): an index of the keys each
//! e-mail address claimed (`E`), a per-source-address count of new addresses per day (`I`),
//! and the single-use confirm/revoke link tokens (`T`); keys: [`super::keyspace`].
//!
//! The caps exist because `claim` lets anyone tie any address to a key: without them one
//! host could make certline mail thousands of confirmation messages to a victim, or mint
//! thousands of dormant identities.

use super::bridge_state::mark_key_confirmed;
use super::keyspace::{api_key, bridge, email_index, key_domain, link_token, meta, new_emails};
use super::{SledStore, WriteBatch};
use crate::apikey::KeyHash;
use crate::store::records::{
    AuditKind, BridgeRecord, KeyRecord, LinkAction, LinkToken, Record, UnixTime,
};
use crate::store::{CapExceeded, ClaimCaps, LinkOutcome, OperatorConfirmOutcome, StoreError};
use std::collections::HashSet;
use std::net::IpAddr;

const SECONDS_PER_DAY: i64 = 86_400;

impl SledStore {
    /// Runs a new claim's cap checks and, when they pass, adds the claim's index entries to
    /// `batch`. Called under the write lock by `create_key` and `claim_key`.
    pub(super) fn claim_checks(
        &self,
        batch: &mut WriteBatch,
        hash: &KeyHash,
        email: &str,
        caps: &ClaimCaps,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<Result<(), CapExceeded>, StoreError> {
        let mut known_address = false;
        let mut unconfirmed = 0u32;
        for entry in self.db.scan_prefix(email_index::prefix(email)) {
            let (k, _) = entry?;
            known_address = true;
            let Some(held) = email_index::decode(&k) else {
                continue;
            };
            if let Some(r) = self.key(&held)?
                && r.confirmed_at.is_none()
                && r.revoked_at.is_none()
            {
                unconfirmed += 1;
            }
        }
        if unconfirmed >= caps.max_unconfirmed_keys_per_email {
            return Ok(Err(CapExceeded::UnconfirmedKeys));
        }
        if !known_address {
            let day = now.div_euclid(SECONDS_PER_DAY);
            let counter = new_emails::encode(day, ip);
            let count = match self.db.get(&counter)? {
                Some(v) => u32::from_be_bytes(v.as_ref().try_into().unwrap_or([0xff; 4])),
                None => 0,
            };
            if count >= caps.max_new_emails_per_address_per_day {
                return Ok(Err(CapExceeded::NewEmails));
            }
            batch.insert(counter, &(count + 1).to_be_bytes()[..]);
            // Earlier days' counters are no longer needed; their keys sort before today's.
            for old in self.db.range(new_emails::before(day)) {
                batch.remove(old?.0.to_vec());
            }
        }
        batch.insert(email_index::encode(email, hash), Vec::new());
        Ok(Ok(()))
    }

    /// Builds the e-mail index for keys claimed before it existed. Runs once per database.
    pub(super) fn migrate_email_index(&self) -> Result<(), StoreError> {
        let done = meta::encode(meta::EMAIL_INDEX_DONE);
        if self.db.contains_key(&done)? {
            return Ok(());
        }
        let _guard = self.lock();
        let mut batch = WriteBatch::default();
        for entry in self.db.scan_prefix([api_key::PREFIX]) {
            let (k, v) = entry?;
            let record = KeyRecord::decode(&v)?;
            if let (Some(email), Some(hash)) = (&record.email, api_key::decode(&k)) {
                batch.insert(email_index::encode(email, &hash), Vec::new());
            }
        }
        batch.insert(done, Vec::new());
        self.write(batch)
    }

    /// Stores link tokens under their hashes.
    pub fn save_link_tokens(&self, tokens: &[([u8; 32], LinkToken)]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (hash, token) in tokens {
            batch.insert(link_token::encode(hash), token.encode());
        }
        self.write(batch)
    }

    /// Follows a link: checks the token (known, meant for `action`, unused, not expired at
    /// `now`), uses it up, and confirms or revokes its key, all in one atomic batch.
    ///
    /// Confirming also sets `key_confirmed` on the bridge records of every domain the key
    /// holds and sends the ones waiting in `awaiting_confirmation` back to `queued`, due now,
    /// so the worker forwards them. Commit before telling the user.
    pub fn use_link(
        &self,
        token_hash: &[u8; 32],
        action: LinkAction,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<LinkOutcome, StoreError> {
        let _guard = self.lock();
        let Some(mut token) = self.get::<LinkToken>(&link_token::encode(token_hash))? else {
            return Ok(LinkOutcome::Unknown);
        };
        if token.action != action {
            return Ok(LinkOutcome::Unknown);
        }
        if token.used_at.is_some() {
            return Ok(LinkOutcome::AlreadyUsed);
        }
        if now >= token.expires_at {
            return Ok(LinkOutcome::Expired);
        }
        let hash = KeyHash(token.key_hash);
        let Some(mut key) = self.key(&hash)? else {
            return Ok(LinkOutcome::Unknown);
        };
        let mut batch = WriteBatch::default();
        token.used_at = Some(now);
        batch.insert(link_token::encode(token_hash), token.encode());
        let key_id = hash.id();
        let outcome = match action {
            LinkAction::Confirm => {
                if key.revoked_at.is_some() {
                    return Ok(LinkOutcome::KeyRevoked);
                }
                let requeued = self.confirm_into(&mut batch, &hash, key, ip, now)?;
                // A confirmed key's names may now go into its ACME account.
                super::acme_state::touch_key(self, &mut batch, &hash, now)?;
                LinkOutcome::Confirmed { key_id, requeued }
            }
            LinkAction::Revoke => {
                if key.revoked_at.is_none() {
                    key.revoked_at = Some(now);
                    batch.insert(api_key::encode(&hash), key.encode());
                    self.audit(&mut batch, now, ip, &hash, AuditKind::KeyRevoked)?;
                }
                // Its ACME account must go, so the host's EAB stops working.
                super::acme_state::touch_key(self, &mut batch, &hash, now)?;
                LinkOutcome::Revoked { key_id }
            }
        };
        self.write(batch)?;
        self.acme_wakeup.notify_one();
        if let LinkOutcome::Confirmed { requeued: 1.., .. } = outcome {
            self.bridge_wakeup.notify_one();
        }
        Ok(outcome)
    }

    /// An operator confirms a key by hand (`certline confirm`), for owners whose claim e-mail
    /// never arrived or keys that were never claimed. Exactly what the confirm link does,
    /// audited the same way (`confirm-apikey`, with the operator's address): the key's waiting
    /// domains go back to `queued`, due now. A revoked key stays revoked. Commit before
    /// telling the operator.
    pub fn confirm_key(
        &self,
        hash: &KeyHash,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<OperatorConfirmOutcome, StoreError> {
        let _guard = self.lock();
        let Some(key) = self.key(hash)? else {
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
    fn confirm_into(
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
    use super::*;
    use crate::apikey::ApiKey;
    use crate::store::{ClaimOutcome, DurabilityMode};
    use std::time::Duration;

    fn open(dir: &std::path::Path) -> SledStore {
        let timing = super::super::Timing {
            relaxed_flush: Duration::from_secs(1),
            checkpoint: Duration::from_secs(1),
        };
        SledStore::open(dir, DurabilityMode::Durable, timing).unwrap()
    }

    const IP: &str = "192.0.2.1";

    #[tokio::test]
    async fn caps_refuse_the_claim_over_the_limit_and_only_that() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let caps = ClaimCaps {
            max_unconfirmed_keys_per_email: 2,
            max_new_emails_per_address_per_day: 2,
        };
        let ip: IpAddr = IP.parse().unwrap();
        let claim = |email: &str, ip: IpAddr, now| {
            let key = ApiKey::generate();
            store.create_key(&key.hash(), Some(email), &caps, ip, now)
        };
        assert_eq!(claim("a@x.org", ip, 0).unwrap(), ClaimOutcome::Claimed);
        assert_eq!(claim("A@x.org", ip, 0).unwrap(), ClaimOutcome::Claimed);
        assert_eq!(
            claim("a@X.ORG", ip, 0).unwrap(),
            ClaimOutcome::Capped(CapExceeded::UnconfirmedKeys),
            "the address holds two unconfirmed keys; case does not matter"
        );
        assert_eq!(claim("b@x.org", ip, 0).unwrap(), ClaimOutcome::Claimed);
        assert_eq!(
            claim("c@x.org", ip, 10).unwrap(),
            ClaimOutcome::Capped(CapExceeded::NewEmails),
            "third new address from one source address in a day"
        );
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(claim("c@x.org", other, 10).unwrap(), ClaimOutcome::Claimed);
        assert_eq!(
            claim("d@x.org", ip, SECONDS_PER_DAY).unwrap(),
            ClaimOutcome::Claimed,
            "a new day"
        );
        // Yesterday's counters are gone.
        let old = new_emails::encode(0, ip);
        assert!(!store.db.contains_key(old).unwrap());
    }

    #[tokio::test]
    async fn links_work_once_and_not_after_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let ip: IpAddr = IP.parse().unwrap();
        let key = ApiKey::generate();
        let caps = ClaimCaps::default();
        store
            .create_key(&key.hash(), Some("a@x.org"), &caps, ip, 0)
            .unwrap();
        let token = |action, n: u8| {
            (
                [n; 32],
                LinkToken {
                    key_hash: key.hash().0,
                    action,
                    created_at: 0,
                    expires_at: 100,
                    used_at: None,
                },
            )
        };
        store
            .save_link_tokens(&[token(LinkAction::Confirm, 1), token(LinkAction::Revoke, 2)])
            .unwrap();
        assert_eq!(
            store.use_link(&[1; 32], LinkAction::Revoke, ip, 5).unwrap(),
            LinkOutcome::Unknown,
            "a confirm token does not revoke"
        );
        assert_eq!(
            store
                .use_link(&[1; 32], LinkAction::Confirm, ip, 100)
                .unwrap(),
            LinkOutcome::Expired
        );
        assert!(matches!(
            store
                .use_link(&[1; 32], LinkAction::Confirm, ip, 99)
                .unwrap(),
            LinkOutcome::Confirmed { requeued: 0, .. }
        ));
        assert_eq!(
            store.key(&key.hash()).unwrap().unwrap().confirmed_at,
            Some(99)
        );
        assert_eq!(
            store
                .use_link(&[1; 32], LinkAction::Confirm, ip, 99)
                .unwrap(),
            LinkOutcome::AlreadyUsed
        );
        assert!(matches!(
            store
                .use_link(&[2; 32], LinkAction::Revoke, ip, 50)
                .unwrap(),
            LinkOutcome::Revoked { .. }
        ));
        assert_eq!(
            store.key(&key.hash()).unwrap().unwrap().revoked_at,
            Some(50)
        );
        assert_eq!(
            store
                .use_link(&[3; 32], LinkAction::Revoke, ip, 50)
                .unwrap(),
            LinkOutcome::Unknown
        );
    }

    #[tokio::test]
    async fn a_confirmation_is_not_undone_by_a_worker_saving_an_older_copy() {
        use crate::domain::normalize;
        use crate::store::BridgePhase;
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.enable_bridge();
        let ip: IpAddr = IP.parse().unwrap();
        let key = ApiKey::generate();
        let caps = ClaimCaps::default();
        store
            .create_key(&key.hash(), Some("a@x.org"), &caps, ip, 0)
            .unwrap();
        store
            .add_domain(&key.hash(), &normalize("www.x.org").unwrap(), ip, 0)
            .unwrap();
        // The worker read the record before the confirmation...
        let stale = store.bridge("www.x.org").unwrap().unwrap();
        assert!(!stale.key_confirmed);
        store
            .save_link_tokens(&[(
                [9; 32],
                LinkToken {
                    key_hash: key.hash().0,
                    action: LinkAction::Confirm,
                    created_at: 0,
                    expires_at: i64::MAX,
                    used_at: None,
                },
            )])
            .unwrap();
        assert!(matches!(
            store
                .use_link(&[9; 32], LinkAction::Confirm, ip, 5)
                .unwrap(),
            LinkOutcome::Confirmed { requeued: 0, .. }
        ));
        // ...and parks it awaiting confirmation after it.
        let mut parked = stale;
        parked.phase = BridgePhase::AwaitingConfirmation;
        parked.next_attempt_at = None;
        store.save_bridge("www.x.org", &parked).unwrap();
        let saved = store.bridge("www.x.org").unwrap().unwrap();
        assert!(saved.key_confirmed);
        assert_eq!(saved.phase, BridgePhase::Queued);
        let due = store.due_bridge_jobs(i64::MAX, 10).unwrap();
        assert_eq!(due.len(), 1, "requeued in the outbox");
    }

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
                .unwrap();
        }
        let domain = normalize("www.x.org").unwrap();
        store.add_domain(&waiting.hash(), &domain, ip, 0).unwrap();
        let mut parked = store.bridge("www.x.org").unwrap().unwrap();
        parked.phase = BridgePhase::AwaitingConfirmation;
        parked.next_attempt_at = None;
        parked.sectigo_id = Some(396);
        store.save_bridge("www.x.org", &parked).unwrap();
        assert!(store.due_bridge_jobs(i64::MAX, 10).unwrap().is_empty());
        let mut record = store.key(&confirmed.hash()).unwrap().unwrap();
        record.confirmed_at = Some(1);
        store
            .db
            .insert(api_key::encode(&confirmed.hash()), record.encode())
            .unwrap();
        store.add_domain(&confirmed.hash(), &domain, ip, 7).unwrap();
        let released = store.bridge("www.x.org").unwrap().unwrap();
        assert!(released.key_confirmed);
        assert_eq!(released.phase, BridgePhase::Queued);
        assert_eq!(released.next_attempt_at, Some(7));
        assert_eq!(released.sectigo_id, Some(396), "what was known is kept");
        assert_eq!(store.due_bridge_jobs(i64::MAX, 10).unwrap().len(), 1);
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
                .unwrap();
        }
        store
            .add_domain(&key.hash(), &normalize("www.x.org").unwrap(), ip, 0)
            .unwrap();
        let mut parked = store.bridge("www.x.org").unwrap().unwrap();
        parked.phase = BridgePhase::AwaitingConfirmation;
        parked.next_attempt_at = None;
        store.save_bridge("www.x.org", &parked).unwrap();
        assert!(store.due_bridge_jobs(i64::MAX, 10).unwrap().is_empty());

        assert_eq!(
            store.confirm_key(&key.hash(), operator, 40).unwrap(),
            OperatorConfirmOutcome::Confirmed {
                confirmed_at: 40,
                already: false,
                requeued: 1
            }
        );
        let released = store.bridge("www.x.org").unwrap().unwrap();
        assert_eq!(released.phase, BridgePhase::Queued);
        assert!(released.key_confirmed);
        assert_eq!(store.due_bridge_jobs(i64::MAX, 10).unwrap().len(), 1);
        let audit: Vec<_> = store.audit_events().map(Result::unwrap).collect();
        let event = audit.last().unwrap();
        assert_eq!(event.kind, AuditKind::KeyConfirmed);
        assert_eq!(event.ip, operator);
        assert_eq!(event.key_id, key.hash().id());

        assert_eq!(
            store.confirm_key(&key.hash(), operator, 50).unwrap(),
            OperatorConfirmOutcome::Confirmed {
                confirmed_at: 40,
                already: true,
                requeued: 0
            },
            "a second confirmation changes nothing"
        );
        assert_eq!(store.audit_events().count(), audit.len());

        store.revoke_key(&revoked.hash(), operator, 60).unwrap();
        assert_eq!(
            store.confirm_key(&revoked.hash(), operator, 61).unwrap(),
            OperatorConfirmOutcome::KeyRevoked
        );
        assert_eq!(
            store.key(&revoked.hash()).unwrap().unwrap().confirmed_at,
            None
        );
        assert_eq!(
            store
                .confirm_key(&ApiKey::generate().hash(), operator, 62)
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
                .unwrap();
            store
                .add_domain(&key.hash(), &normalize(domain).unwrap(), ip, 0)
                .unwrap();
        }
        let mut record = store.key(&confirmed.hash()).unwrap().unwrap();
        record.confirmed_at = Some(1);
        store
            .db
            .insert(api_key::encode(&confirmed.hash()), record.encode())
            .unwrap();
        // Registered while the bridge was off; now it starts.
        store.enable_bridge();
        assert_eq!(store.backfill_bridge(10).unwrap(), 2);
        assert!(store.bridge("a.x.org").unwrap().unwrap().key_confirmed);
        assert!(!store.bridge("b.x.org").unwrap().unwrap().key_confirmed);
    }

    #[tokio::test]
    async fn the_email_index_is_built_for_keys_claimed_before_it_existed() {
        let dir = tempfile::tempdir().unwrap();
        let key = ApiKey::generate();
        {
            let store = open(dir.path());
            store
                .create_key(
                    &key.hash(),
                    Some("a@x.org"),
                    &ClaimCaps::default(),
                    IP.parse().unwrap(),
                    0,
                )
                .unwrap();
            // Simulate a database from before the index.
            let index = email_index::encode("a@x.org", &key.hash());
            store.db.remove(index).unwrap();
            store
                .db
                .remove(meta::encode(meta::EMAIL_INDEX_DONE))
                .unwrap();
            store.close().await.unwrap();
        }
        let store = open(dir.path());
        let caps = ClaimCaps {
            max_unconfirmed_keys_per_email: 1,
            max_new_emails_per_address_per_day: 5,
        };
        let second = ApiKey::generate();
        assert_eq!(
            store
                .create_key(
                    &second.hash(),
                    Some("a@x.org"),
                    &caps,
                    IP.parse().unwrap(),
                    0
                )
                .unwrap(),
            ClaimOutcome::Capped(CapExceeded::UnconfirmedKeys)
        );
    }
}
