//! What the operator's face (the admin API) reads and does: the domain inventory with its
//! bridge state and holders, the key list, key lookup by id prefix, requeueing a domain, and
//! the readiness probe. Listings are lazy iterators that start after a cursor, so the admin
//! API pages through any number of domains holding one page in memory.

use super::keyspace::{api_key, bridge, bridge_outbox, domain as domain_record, meta};
use super::{SledStore, WriteBatch};
use crate::apikey::KeyHash;
use crate::store::records::{
    AuditKind, BridgePhase, BridgeRecord, DomainRecord, KeyRecord, Record, UnixTime,
};
use crate::store::{Holder, InventoryRow, RequeueOutcome, StoreError};
use std::collections::HashMap;
use std::net::IpAddr;

impl SledStore {
    /// The registered domains after `after` (exclusive; `None`: from the first), in
    /// lexicographic order, each with its bridge record and holders. Lazy: each row is read
    /// when the iterator is advanced, so a caller that takes a page holds only that page,
    /// whatever the size of the store.
    pub fn inventory_after(
        &self,
        after: Option<&str>,
    ) -> impl Iterator<Item = Result<InventoryRow, StoreError>> + '_ {
        self.db
            .range::<Vec<u8>, _>(domain_record::after(after))
            .map(move |entry| {
                let (k, v) = entry?;
                let domain = domain_record::decode(&k);
                self.inventory_row(domain, DomainRecord::decode(&v)?)
            })
    }

    fn inventory_row(
        &self,
        domain: String,
        record: DomainRecord,
    ) -> Result<InventoryRow, StoreError> {
        let host = match crate::domain::normalize(&domain) {
            Ok(d) => d.host().to_owned(),
            Err(_) => domain.clone(),
        };
        let mut holders = Vec::new();
        for hash in self.holders_of(&domain)? {
            if let Some(key) = self.key(&hash)? {
                holders.push(Holder {
                    key_id: hash.id(),
                    confirmed: key.confirmed_at.is_some(),
                    revoked: key.revoked_at.is_some(),
                });
            }
        }
        Ok(InventoryRow {
            bridge: self.bridge(&host)?,
            holders,
            registered_at: record.first_added_at,
            domain,
        })
    }

    /// The keys after `after` (exclusive; `None`: from the first), in the order of their
    /// hashes. Lazy, like [`SledStore::inventory_after`].
    pub fn keys_after(
        &self,
        after: Option<&KeyHash>,
    ) -> impl Iterator<Item = Result<(KeyHash, KeyRecord), StoreError>> + '_ {
        self.db
            .range::<Vec<u8>, _>(api_key::after(after))
            .filter_map(|entry| {
                let (k, v) = match entry {
                    Ok(kv) => kv,
                    Err(e) => return Some(Err(e.into())),
                };
                let hash = api_key::decode(&k)?;
                Some(KeyRecord::decode(&v).map(|r| (hash, r)).map_err(Into::into))
            })
    }

    /// The keys whose id (the lower-case hex of their hash) starts with `prefix`.
    pub fn keys_with_id_prefix(
        &self,
        prefix: &str,
    ) -> Result<Vec<(KeyHash, KeyRecord)>, StoreError> {
        let prefix = prefix.to_ascii_lowercase();
        // Narrow the scan by the whole bytes the prefix names; filter the odd digit after.
        let whole = hex::decode(&prefix[..prefix.len() & !1]).unwrap_or_default();
        let mut out = Vec::new();
        for entry in self.db.scan_prefix(api_key::hash_prefix(&whole)) {
            let (k, v) = entry?;
            let Some(hash) = api_key::decode(&k) else {
                continue;
            };
            if hex::encode(hash.0).starts_with(&prefix) {
                out.push((hash, KeyRecord::decode(&v)?));
            }
        }
        Ok(out)
    }

    /// Sends a domain's bridge record back to `queued`, due now, keeping what is known about
    /// it (Sectigo id, last error) for display. `host` is the bridge's name for it (no port).
    /// A domain registered while the bridge was off gets its first record.
    pub fn requeue_domain(
        &self,
        host: &str,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<RequeueOutcome, StoreError> {
        if !self.bridge_enabled() {
            return Ok(RequeueOutcome::BridgeOff);
        }
        let _guard = self.lock();
        let known = self.bridge(host)?;
        let record = match known {
            Some(mut r) => {
                r.phase = BridgePhase::Queued;
                r.attempts = 0;
                let old = r.next_attempt_at.replace(now);
                (r, old)
            }
            None => {
                let registered = self.db.contains_key(domain_record::encode(host))?
                    || (self.db.scan_prefix(domain_record::with_port(host)))
                        .next()
                        .is_some();
                if !registered {
                    return Ok(RequeueOutcome::UnknownDomain);
                }
                (BridgeRecord::queued(now, false), None)
            }
        };
        let (record, old_due) = record;
        let mut batch = WriteBatch::default();
        if let Some(due) = old_due {
            batch.remove(bridge_outbox::encode(due, host));
        }
        batch.insert(bridge::encode(host), record.encode());
        batch.insert(bridge_outbox::encode(now, host), Vec::new());
        let audit_key = KeyHash([0; 32]);
        let kind = AuditKind::DomainRequeued {
            domain: host.to_owned(),
        };
        self.audit(&mut batch, now, ip, &audit_key, kind)?;
        self.write(batch)?;
        self.bridge_wakeup.notify_one();
        Ok(RequeueOutcome::Requeued)
    }

    /// How many bridge records are in each phase (for the metrics).
    pub fn bridge_phase_counts(&self) -> Result<HashMap<BridgePhase, u64>, StoreError> {
        let mut counts = HashMap::new();
        for entry in self.db.scan_prefix([bridge::PREFIX]) {
            let (_, v) = entry?;
            *counts.entry(BridgeRecord::decode(&v)?.phase).or_default() += 1;
        }
        Ok(counts)
    }

    /// A tiny write for the readiness check; the caller commits it to prove the disk takes
    /// writes.
    pub fn probe_write(&self, now: UnixTime) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.insert(meta::encode(meta::READYZ), now.to_be_bytes().to_vec());
        self.write(batch)
    }
}
