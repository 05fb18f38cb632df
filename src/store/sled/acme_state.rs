//! The ACME worker's durable state: one [`AcmeKeyRecord`] per API key (`U`, for SCM's ACME
//! "users") and an index of due times (`Y`), the outbox the ACME worker consumes in time
//! order (keys: [`super::keyspace`]).
//!
//! The work unit is the key, not the domain: a key's account must hold exactly its eligible
//! domains, and the worker reconciles that whole set against SCM in one pass. Registering,
//! removing and revoking touch the key in the same batch as the change itself
//! ([`touch_key`]), so no acknowledged change can miss the worker.

use super::keyspace::{acme_key, acme_outbox, api_key};
use super::{SledStore, WriteBatch};
use crate::apikey::KeyHash;
use crate::store::records::{KeyRecord, Record, UnixTime};
use crate::store::{AcmeKeyRecord, StoreError};
use std::sync::atomic::Ordering;

impl SledStore {
    /// Turns ACME bookkeeping on (at start-up, when `[sectigo.acme]` is configured).
    pub fn enable_acme(&self) {
        self.acme_enabled.store(true, Ordering::SeqCst);
    }

    /// Is ACME bookkeeping on?
    pub fn acme_enabled(&self) -> bool {
        self.acme_enabled.load(Ordering::SeqCst)
    }

    /// Resolves when a key has been touched since the last call.
    pub async fn acme_queued(&self) {
        self.acme_wakeup.notified().await
    }

    /// A key's ACME record.
    pub async fn acme_key(&self, hash: &KeyHash) -> Result<Option<AcmeKeyRecord>, StoreError> {
        self.read_acme_key(hash)
    }

    /// [`SledStore::acme_key`], for code that holds the writers' lock.
    fn read_acme_key(&self, hash: &KeyHash) -> Result<Option<AcmeKeyRecord>, StoreError> {
        self.get(&acme_key::encode(hash))
    }

    /// Up to `limit` keys due at or before `now`, earliest first.
    pub async fn due_acme_keys(
        &self,
        now: UnixTime,
        limit: usize,
    ) -> Result<Vec<KeyHash>, StoreError> {
        let mut out = Vec::new();
        for entry in self.db.scan_prefix([acme_outbox::PREFIX]) {
            let (k, _) = entry?;
            if acme_outbox::due(&k) > now || out.len() >= limit {
                break;
            }
            out.push(acme_outbox::decode(&k));
        }
        Ok(out)
    }

    /// The earliest due time in the ACME outbox.
    pub async fn next_acme_due(&self) -> Result<Option<UnixTime>, StoreError> {
        match self.db.scan_prefix([acme_outbox::PREFIX]).next() {
            Some(entry) => Ok(Some(acme_outbox::due(&entry?.0))),
            None => Ok(None),
        }
    }

    /// Saves the worker's view of a key. If the key was touched since the worker read it
    /// (`record.touches` is behind), the key stays due now and the newer count is kept.
    pub async fn save_acme_key(
        &self,
        hash: &KeyHash,
        record: &AcmeKeyRecord,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        let _guard = self.lock();
        let mut batch = WriteBatch::default();
        let mut record = record.clone();
        let mut touched = false;
        if let Some(old) = self.read_acme_key(hash)? {
            if let Some(due) = old.next_attempt_at {
                batch.remove(acme_outbox::encode(due, hash));
            }
            if old.touches > record.touches {
                record.touches = old.touches;
                record.next_attempt_at = Some(now);
                touched = true;
            }
        }
        batch.insert(acme_key::encode(hash), record.encode());
        if let Some(due) = record.next_attempt_at {
            batch.insert(acme_outbox::encode(due, hash), Vec::new());
        }
        self.write(batch)?;
        if touched {
            self.acme_wakeup.notify_one();
        }
        Ok(())
    }

    /// Queues `hash` for the ACME worker now (a separate batch; for the admin API and tests).
    pub async fn touch_acme_key(&self, hash: &KeyHash, now: UnixTime) -> Result<(), StoreError> {
        let _guard = self.lock();
        let mut batch = WriteBatch::default();
        touch_key(self, &mut batch, hash, now)?;
        self.write(batch)?;
        self.acme_wakeup.notify_one();
        Ok(())
    }

    /// Run when the ACME worker starts: queues every key that holds domains or has an ACME
    /// record, since the configuration (or eligibility in SCM) may have changed while
    /// certline was down, and a touch may have been lost with an unacknowledged write.
    /// Returns how many keys were queued.
    pub async fn backfill_acme(&self, now: UnixTime) -> Result<usize, StoreError> {
        let mut queued = 0;
        for entry in self.db.scan_prefix([api_key::PREFIX]) {
            let (k, v) = entry?;
            let Some(hash) = api_key::decode(&k) else {
                continue;
            };
            let record = KeyRecord::decode(&v)?;
            let acme = self.read_acme_key(&hash)?;
            let done = acme.as_ref().is_some_and(|a| a.account_deleted);
            let idle = record.revoked_at.is_some() || !self.holds_domains(&hash)?;
            if done || (idle && acme.is_none()) {
                continue;
            }
            self.touch_acme_key(&hash, now).await?;
            queued += 1;
        }
        Ok(queued)
    }
}

/// Adds to `batch` that `hash` needs the ACME worker now: its record's touch count goes up
/// and its outbox entry moves to `now`. Does nothing while ACME is off. The caller holds the
/// store's write lock and wakes the worker after writing.
pub(super) fn touch_key(
    store: &SledStore,
    batch: &mut WriteBatch,
    hash: &KeyHash,
    now: UnixTime,
) -> Result<(), StoreError> {
    if !store.acme_enabled() {
        return Ok(());
    }
    let mut record = store.read_acme_key(hash)?.unwrap_or_default();
    if let Some(due) = record.next_attempt_at {
        batch.remove(acme_outbox::encode(due, hash));
    }
    record.touches += 1;
    record.attempts = 0;
    record.next_attempt_at = Some(now);
    batch.insert(acme_key::encode(hash), record.encode());
    batch.insert(acme_outbox::encode(now, hash), Vec::new());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::open as store;
    use super::*;

    #[tokio::test]
    async fn a_touch_while_the_worker_holds_a_copy_is_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.enable_acme();
        let hash = KeyHash([7; 32]);
        s.touch_acme_key(&hash, 100).await.unwrap();
        assert_eq!(s.due_acme_keys(100, 10).await.unwrap(), vec![hash]);
        // The worker reads the record, works, and meanwhile the key is touched again.
        let mut copy = s.acme_key(&hash).await.unwrap().unwrap();
        s.touch_acme_key(&hash, 150).await.unwrap();
        copy.account_id = Some(24_282);
        copy.next_attempt_at = Some(100 + 86_400);
        s.save_acme_key(&hash, &copy, 160).await.unwrap();
        let saved = s.acme_key(&hash).await.unwrap().unwrap();
        assert_eq!(
            saved.account_id,
            Some(24_282),
            "the worker's result is kept"
        );
        assert_eq!(
            saved.next_attempt_at,
            Some(160),
            "and the key stays due now"
        );
        assert_eq!(s.due_acme_keys(160, 10).await.unwrap(), vec![hash]);
        assert_eq!(s.next_acme_due().await.unwrap(), Some(160));
        // Without a touch in between, the worker's schedule holds; one outbox entry only.
        let copy = s.acme_key(&hash).await.unwrap().unwrap();
        let mut later = copy.clone();
        later.next_attempt_at = Some(500);
        s.save_acme_key(&hash, &later, 170).await.unwrap();
        assert!(s.due_acme_keys(499, 10).await.unwrap().is_empty());
        assert_eq!(s.due_acme_keys(500, 10).await.unwrap(), vec![hash]);
    }

    #[tokio::test]
    async fn nothing_is_queued_while_acme_is_off() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let hash = KeyHash([9; 32]);
        s.touch_acme_key(&hash, 100).await.unwrap();
        assert!(s.acme_key(&hash).await.unwrap().is_none());
        assert_eq!(s.next_acme_due().await.unwrap(), None);
    }
}
