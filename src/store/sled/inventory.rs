//! What the operator's face (the admin API) reads and does: the domain inventory with its
//! bridge state and holders, the key list, key lookup by id prefix, requeueing a domain, and
//! the readiness probe. Listings are pages that start after a cursor, so the admin API pages
//! through any number of domains holding one page in memory.

use super::holders::holders_in;
use super::keyspace::{api_key, bridge, bridge_outbox, domain as domain_record, meta};
use super::{SledStore, WriteBatch, get_in};
use crate::apikey::KeyHash;
use crate::store::records::{
    AuditKind, BridgePhase, BridgeRecord, DomainRecord, KeyRecord, Record, UnixTime,
};
use crate::store::{Holder, InventoryRow, RequeueOutcome, StoreError};
use std::collections::HashMap;
use std::net::IpAddr;

impl SledStore {
    /// Up to `limit` registered domains after `after` (exclusive; `None`: from the first), in
    /// lexicographic order, each with its bridge record and holders. Read off the runtime
    /// (a page can be thousands of rows).
    pub async fn inventory_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<InventoryRow>, StoreError> {
        let range = domain_record::after(after);
        self.off_runtime(move |db| {
            db.range::<Vec<u8>, _>(range)
                .take(limit)
                .map(|entry| {
                    let (k, v) = entry?;
                    inventory_row(db, domain_record::decode(&k), DomainRecord::decode(&v)?)
                })
                .collect()
        })
        .await
    }

    /// Up to `limit` keys after `after` (exclusive; `None`: from the first), in the order of
    /// their hashes. Read off the runtime, like [`SledStore::inventory_after`].
    pub async fn keys_after(
        &self,
        after: Option<&KeyHash>,
        limit: usize,
    ) -> Result<Vec<(KeyHash, KeyRecord)>, StoreError> {
        let range = api_key::after(after);
        let mut page: Vec<(KeyHash, KeyRecord)> = self
            .off_runtime(move |db| {
                db.range::<Vec<u8>, _>(range)
                    .filter_map(|entry| {
                        let (k, v) = match entry {
                            Ok(kv) => kv,
                            Err(e) => return Some(Err(e.into())),
                        };
                        let hash = api_key::decode(&k)?;
                        Some(KeyRecord::decode(&v).map(|r| (hash, r)).map_err(Into::into))
                    })
                    .take(limit)
                    .collect::<Result<_, StoreError>>()
            })
            .await?;
        self.fill_domain_counts(&mut page)?;
        Ok(page)
    }

    /// Puts each key's count of domains into its record (the stored field is not kept up to
    /// date: [`super::domain_counts`]).
    fn fill_domain_counts(&self, keys: &mut [(KeyHash, KeyRecord)]) -> Result<(), StoreError> {
        for (hash, record) in keys {
            record.domain_count = self.domain_count(hash)?;
        }
        Ok(())
    }

    /// The keys whose id (the lower-case hex of their hash) starts with `prefix`.
    pub async fn keys_with_id_prefix(
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
        self.fill_domain_counts(&mut out)?;
        Ok(out)
    }

    /// Sends a domain's bridge record back to `queued`, due now, keeping what is known about
    /// it (Sectigo id, last error) for display. `host` is the bridge's name for it (no port).
    /// A domain registered while the bridge was off gets its first record.
    pub async fn requeue_domain(
        &self,
        host: &str,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<RequeueOutcome, StoreError> {
        if !self.bridge_enabled() {
            return Ok(RequeueOutcome::BridgeOff);
        }
        let _guard = self.lock();
        let known = self.read_bridge(host)?;
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

    /// How many bridge records are in each phase (for the metrics). A scan, off the runtime.
    pub async fn bridge_phase_counts(&self) -> Result<HashMap<BridgePhase, u64>, StoreError> {
        self.off_runtime(|db| {
            let mut counts = HashMap::new();
            for entry in db.scan_prefix([bridge::PREFIX]) {
                let (_, v) = entry?;
                *counts.entry(BridgeRecord::decode(&v)?.phase).or_default() += 1;
            }
            Ok(counts)
        })
        .await
    }

    /// A tiny write for the readiness check; the caller commits it to prove the disk takes
    /// writes.
    pub async fn probe_write(&self, now: UnixTime) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.insert(meta::encode(meta::READYZ), now.to_be_bytes().to_vec());
        self.write(batch)
    }
}

/// One inventory row: `domain` (a `D`-registered name) with its bridge record and holders,
/// read from `db` (off the runtime).
fn inventory_row(
    db: &sled::Db,
    domain: String,
    record: DomainRecord,
) -> Result<InventoryRow, StoreError> {
    let host = match crate::domain::normalize(&domain) {
        Ok(d) => d.host().to_owned(),
        Err(_) => domain.clone(),
    };
    let mut holders = Vec::new();
    for hash in holders_in(db, &domain)? {
        if let Some(key) = get_in::<KeyRecord>(db, &api_key::encode(&hash))? {
            holders.push(Holder {
                key_id: hash.id(),
                confirmed: key.confirmed_at.is_some(),
                revoked: key.revoked_at.is_some(),
            });
        }
    }
    Ok(InventoryRow {
        bridge: get_in(db, &bridge::encode(&host))?,
        holders,
        registered_at: record.first_added_at,
        domain,
    })
}
