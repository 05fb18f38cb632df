//! The claim caps' bookkeeping ([`crate::store::ClaimCaps`], reference/keychest.md §2): an
//! index of the keys each e-mail address claimed (`E`), and a per-source-address count of new
//! addresses per day (`I`); keys: [`super::keyspace`]. Both are checked and written inside
//! the claim's own batch, under the writers' lock, so two concurrent claims cannot both pass
//! a cap that only one of them fits under.

use super::keyspace::{api_key, email_index, meta, new_emails};
use super::{SledStore, WriteBatch};
use crate::apikey::KeyHash;
use crate::store::records::{KeyRecord, Record, UnixTime};
use crate::store::{CapExceeded, ClaimCaps, StoreError};
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
            if let Some(r) = self.read_key(&held)?
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
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{IP, open};
    use super::*;
    use crate::apikey::ApiKey;
    use crate::store::ClaimOutcome;

    #[tokio::test]
    async fn caps_refuse_the_claim_over_the_limit_and_only_that() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let caps = ClaimCaps {
            max_unconfirmed_keys_per_email: 2,
            max_new_emails_per_address_per_day: 2,
        };
        let ip: IpAddr = IP.parse().unwrap();
        let claim = async |email: &str, ip: IpAddr, now| {
            let key = ApiKey::generate();
            store
                .create_key(&key.hash(), Some(email), &caps, ip, now)
                .await
        };
        assert_eq!(
            claim("a@x.org", ip, 0).await.unwrap(),
            ClaimOutcome::Claimed
        );
        assert_eq!(
            claim("A@x.org", ip, 0).await.unwrap(),
            ClaimOutcome::Claimed
        );
        assert_eq!(
            claim("a@X.ORG", ip, 0).await.unwrap(),
            ClaimOutcome::Capped(CapExceeded::UnconfirmedKeys),
            "the address holds two unconfirmed keys; case does not matter"
        );
        assert_eq!(
            claim("b@x.org", ip, 0).await.unwrap(),
            ClaimOutcome::Claimed
        );
        assert_eq!(
            claim("c@x.org", ip, 10).await.unwrap(),
            ClaimOutcome::Capped(CapExceeded::NewEmails),
            "third new address from one source address in a day"
        );
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(
            claim("c@x.org", other, 10).await.unwrap(),
            ClaimOutcome::Claimed
        );
        assert_eq!(
            claim("d@x.org", ip, SECONDS_PER_DAY).await.unwrap(),
            ClaimOutcome::Claimed,
            "a new day"
        );
        // Yesterday's counters are gone.
        let old = new_emails::encode(0, ip);
        assert!(!store.db.contains_key(old).unwrap());
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
                .await
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
                .await
                .unwrap(),
            ClaimOutcome::Capped(CapExceeded::UnconfirmedKeys)
        );
    }
}
