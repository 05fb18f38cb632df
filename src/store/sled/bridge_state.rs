//! The bridge's durable queue: one [`BridgeRecord`] per host name (`S`) and an index of due
//! times (`O`), which is the outbox the worker consumes in time order (keys:
//! [`super::keyspace`]).
//!
//! A domain's first registration writes its record and outbox entry in the same batch as the
//! registration itself, so no acknowledged domain can miss the bridge. Every later change
//! moves the outbox entry in the same batch as the record (one log record: see
//! [`super::wal::WriteBatch`]).

use super::keyspace::{bridge, bridge_outbox, domain as domain_record};
use super::{SledStore, WriteBatch, count_prefix};
use crate::store::StoreError;
use crate::store::records::{BridgePhase, BridgeRecord, Record, UnixTime};
use std::sync::atomic::Ordering;

impl SledStore {
    /// Turns bridge bookkeeping on: from now on, new domains are queued for the bridge.
    /// Called once at start-up when a `[sectigo]` section is configured.
    pub fn enable_bridge(&self) {
        self.bridge_enabled.store(true, Ordering::SeqCst);
    }

    /// Is the bridge bookkeeping on?
    pub fn bridge_enabled(&self) -> bool {
        self.bridge_enabled.load(Ordering::SeqCst)
    }

    /// The bridge record of a domain.
    pub async fn bridge(&self, domain: &str) -> Result<Option<BridgeRecord>, StoreError> {
        self.read_bridge(domain)
    }

    /// [`SledStore::bridge`], for code that holds the writers' lock.
    pub(super) fn read_bridge(&self, domain: &str) -> Result<Option<BridgeRecord>, StoreError> {
        self.get(&bridge::encode(domain))
    }

    /// Up to `limit` domains due at or before `now`, earliest first.
    pub async fn due_bridge_jobs(
        &self,
        now: UnixTime,
        limit: usize,
    ) -> Result<Vec<(String, BridgeRecord)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.db.scan_prefix([bridge_outbox::PREFIX]) {
            let (k, _) = entry?;
            let (due, domain) = bridge_outbox::decode(&k);
            if due > now || out.len() >= limit {
                break;
            }
            if let Some(record) = self.read_bridge(&domain)? {
                out.push((domain, record));
            }
        }
        Ok(out)
    }

    /// The earliest due time in the outbox, if any.
    pub async fn next_bridge_due(&self) -> Result<Option<UnixTime>, StoreError> {
        match self.db.scan_prefix([bridge_outbox::PREFIX]).next() {
            Some(entry) => Ok(Some(bridge_outbox::due(&entry?.0))),
            None => Ok(None),
        }
    }

    /// How many domains are waiting in the outbox (for metrics). A scan, off the runtime:
    /// call rarely.
    pub async fn outbox_len(&self) -> Result<usize, StoreError> {
        self.off_runtime(|db| count_prefix(db, bridge_outbox::PREFIX))
            .await
    }

    /// Replaces a domain's bridge record and moves its outbox entry to the new due time.
    ///
    /// `key_confirmed` only ever goes from false to true: a key confirmed while the worker
    /// held an older copy of the record must not be undone by the worker's save, and a
    /// record the worker parks in `awaiting_confirmation` meanwhile is requeued at once.
    pub async fn save_bridge(&self, domain: &str, record: &BridgeRecord) -> Result<(), StoreError> {
        let _guard = self.lock();
        let mut batch = WriteBatch::default();
        let mut record = record.clone();
        let mut requeued = false;
        if let Some(old) = self.read_bridge(domain)? {
            if let Some(due) = old.next_attempt_at {
                batch.remove(bridge_outbox::encode(due, domain));
            }
            if old.key_confirmed && !record.key_confirmed {
                record.key_confirmed = true;
                if record.phase == BridgePhase::AwaitingConfirmation {
                    record.phase = BridgePhase::Queued;
                    record.next_attempt_at = Some(chrono::Utc::now().timestamp());
                    requeued = true;
                }
            }
        }
        batch.insert(bridge::encode(domain), record.encode());
        if let Some(due) = record.next_attempt_at {
            batch.insert(bridge_outbox::encode(due, domain), Vec::new());
        }
        self.write(batch)?;
        if requeued {
            self.bridge_wakeup.notify_one();
        }
        Ok(())
    }

    /// Makes every record parked by a 401 due at `now` (new credentials arrived: a restart
    /// or a reload). The records keep `waiting_on_credentials` until a step succeeds, so the
    /// bridge shows `paused` until the credentials are proven. Returns how many there are.
    pub async fn release_credential_waiters(&self, now: UnixTime) -> Result<usize, StoreError> {
        let mut released = 0;
        for (domain, mut record) in self.bridge_records_where(|r| r.waiting_on_credentials)? {
            record.next_attempt_at = Some(now);
            self.save_bridge(&domain, &record).await?;
            released += 1;
        }
        if released > 0 {
            self.bridge_wakeup.notify_one();
        }
        Ok(released)
    }

    /// Does any record wait on credentials (parked by a 401)?
    pub async fn has_credential_waiters(&self) -> Result<bool, StoreError> {
        Ok(!self
            .bridge_records_where(|r| r.waiting_on_credentials)?
            .is_empty())
    }

    /// Makes every domain that validates at `dcv_domain` (but is not it) due at `now`, so
    /// its DCV state follows its validation domain's at once.
    pub async fn wake_dcv_dependents(
        &self,
        dcv_domain: &str,
        now: UnixTime,
    ) -> Result<usize, StoreError> {
        let mut woken = 0;
        let dependents = self.bridge_records_where(|r| {
            r.dcv_domain.as_deref() == Some(dcv_domain) && r.phase == BridgePhase::Synced
        })?;
        for (domain, mut record) in dependents {
            if domain == dcv_domain {
                continue;
            }
            record.next_attempt_at = Some(now);
            self.save_bridge(&domain, &record).await?;
            woken += 1;
        }
        if woken > 0 {
            self.bridge_wakeup.notify_one();
        }
        Ok(woken)
    }

    /// Gives `domain` a bridge record, queued and due at `now`, unless it has one: a
    /// validation domain the bridge must bring into SCM for its subdomains' DCV. Returns
    /// whether one was created.
    pub async fn ensure_bridge_record(
        &self,
        domain: &str,
        key_confirmed: bool,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        {
            let _guard = self.lock();
            if self.db.contains_key(bridge::encode(domain))? {
                return Ok(false);
            }
            let mut batch = WriteBatch::default();
            queue_new_domain(&mut batch, domain, now, key_confirmed);
            self.write(batch)?;
        }
        self.bridge_wakeup.notify_one();
        Ok(true)
    }

    /// All bridge records matching `keep` (a full scan: for rare, operator-paced events).
    fn bridge_records_where(
        &self,
        keep: impl Fn(&BridgeRecord) -> bool,
    ) -> Result<Vec<(String, BridgeRecord)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.db.scan_prefix([bridge::PREFIX]) {
            let (k, v) = entry?;
            let record = BridgeRecord::decode(&v)?;
            if keep(&record) {
                out.push((bridge::decode(&k), record));
            }
        }
        Ok(out)
    }

    /// Run when the bridge starts: queues every registered domain that has no bridge record
    /// yet (registered while the bridge was not configured), and requeues the domains whose
    /// rest depends on the configuration (outside the allowed suffixes, awaiting a confirmed
    /// key), since the configuration may have changed. Returns how many were queued.
    pub async fn backfill_bridge(&self, now: UnixTime) -> Result<usize, StoreError> {
        let mut queued = 0;
        let confirmed = self.hosts_of_confirmed_keys()?;
        for entry in self.db.scan_prefix([domain_record::PREFIX]) {
            let (k, _) = entry?;
            let Ok(domain) = crate::domain::normalize(&domain_record::decode(&k)) else {
                continue;
            };
            let host = domain.host();
            let _guard = self.lock();
            if self.db.contains_key(bridge::encode(host))? {
                continue;
            }
            let mut batch = WriteBatch::default();
            queue_new_domain(&mut batch, host, now, confirmed.contains(host));
            self.write(batch)?;
            queued += 1;
        }
        for entry in self.db.scan_prefix([bridge::PREFIX]) {
            let (k, v) = entry?;
            let mut record = BridgeRecord::decode(&v)?;
            if matches!(
                record.phase,
                BridgePhase::NotForwarded | BridgePhase::AwaitingConfirmation
            ) {
                let host = bridge::decode(&k);
                record.phase = BridgePhase::Queued;
                record.next_attempt_at = Some(now);
                record.key_confirmed |= confirmed.contains(&host);
                self.save_bridge(&host, &record).await?;
                queued += 1;
            }
        }
        Ok(queued)
    }
}

/// Adds a new domain's bridge record and outbox entry to a registration batch.
pub(super) fn queue_new_domain(
    batch: &mut WriteBatch,
    domain: &str,
    now: UnixTime,
    key_confirmed: bool,
) {
    batch.insert(
        bridge::encode(domain),
        BridgeRecord::queued(now, key_confirmed).encode(),
    );
    batch.insert(bridge_outbox::encode(now, domain), Vec::new());
}

/// Adds to `batch` the change that a confirmed key now holds `domain`: `key_confirmed` is
/// set, and a record waiting in `awaiting_confirmation` goes back to `queued`, due now (its
/// outbox entry is written with it). Returns whether it was requeued (wake the worker after
/// the batch is applied). Writes nothing when there is nothing to change.
pub(super) fn mark_key_confirmed(
    batch: &mut WriteBatch,
    domain: &str,
    mut record: BridgeRecord,
    now: UnixTime,
) -> bool {
    let waiting = record.phase == BridgePhase::AwaitingConfirmation;
    if record.key_confirmed && !waiting {
        return false;
    }
    record.key_confirmed = true;
    if waiting {
        if let Some(old) = record.next_attempt_at {
            batch.remove(bridge_outbox::encode(old, domain));
        }
        record.phase = BridgePhase::Queued;
        record.attempts = 0;
        record.next_attempt_at = Some(now);
        batch.insert(bridge_outbox::encode(now, domain), Vec::new());
    }
    batch.insert(bridge::encode(domain), record.encode());
    waiting
}
