//! What the operator's face (the admin API) reads and does: the domain inventory with its
//! bridge state and holders, the key list, key lookup by id prefix, requeueing a domain, and
//! the readiness probe. Whole-database scans live here, away from the line protocol's paths;
//! they are fine for an operator's occasional request, not for a hot path.

use super::bridge_state::{bridge_key, outbox_key};
use super::claims::meta_key;
use super::records::{AuditKind, BridgePhase, BridgeRecord, DomainRecord, KeyRecord, Record};
use super::{BRIDGE, DOMAIN, KEY, KEY_DOMAIN, Store, StoreError, UnixTime, WriteBatch};
use crate::apikey::KeyHash;
use std::collections::HashMap;
use std::net::IpAddr;

/// One registered domain as the inventory shows it.
#[derive(Debug, Clone)]
pub struct InventoryRow {
    /// The normalised domain (`name` or `name:port`).
    pub domain: String,
    /// When any key first registered it.
    pub registered_at: UnixTime,
    /// Its bridge record (keyed by host name), if the bridge has seen it.
    pub bridge: Option<BridgeRecord>,
    /// The keys that hold it now.
    pub holders: Vec<Holder>,
}

/// A key holding a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The key id (first 12 hex digits of the key's hash).
    pub key_id: String,
    pub confirmed: bool,
    pub revoked: bool,
}

/// What `requeue_domain` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequeueOutcome {
    /// The bridge record is `queued`, due now.
    Requeued,
    /// No key ever registered the domain.
    UnknownDomain,
    /// The bridge is not configured, so there is nothing to requeue.
    BridgeOff,
}

impl Store {
    /// Every registered domain with its bridge record and holders, in lexicographic order.
    /// Three scans (keys, key-domain pairs, domains); an operator's request, not a hot path.
    pub fn inventory(&self) -> Result<Vec<InventoryRow>, StoreError> {
        let mut keys: HashMap<[u8; 32], Holder> = HashMap::new();
        for entry in self.db.scan_prefix([KEY]) {
            let (k, v) = entry?;
            let Ok(hash) = <[u8; 32]>::try_from(&k[1..]) else {
                continue;
            };
            let r = KeyRecord::decode(&v)?;
            let holder = Holder {
                key_id: KeyHash(hash).id(),
                confirmed: r.confirmed_at.is_some(),
                revoked: r.revoked_at.is_some(),
            };
            keys.insert(hash, holder);
        }
        let mut holders: HashMap<String, Vec<Holder>> = HashMap::new();
        for entry in self.db.scan_prefix([KEY_DOMAIN]) {
            let (k, _) = entry?;
            if k.len() < 33 {
                continue;
            }
            let hash: [u8; 32] = k[1..33].try_into().expect("checked length");
            let domain = String::from_utf8_lossy(&k[33..]).into_owned();
            if let Some(h) = keys.get(&hash) {
                holders.entry(domain).or_default().push(h.clone());
            }
        }
        let mut rows = Vec::new();
        for entry in self.db.scan_prefix([DOMAIN]) {
            let (k, v) = entry?;
            let domain = String::from_utf8_lossy(&k[1..]).into_owned();
            let record = DomainRecord::decode(&v)?;
            let host = match crate::domain::normalize(&domain) {
                Ok(d) => d.host().to_owned(),
                Err(_) => domain.clone(),
            };
            rows.push(InventoryRow {
                bridge: self.bridge(&host)?,
                holders: holders.remove(&domain).unwrap_or_default(),
                registered_at: record.first_added_at,
                domain,
            });
        }
        Ok(rows)
    }

    /// Every key, in the order of their hashes.
    pub fn keys(&self) -> Result<Vec<(KeyHash, KeyRecord)>, StoreError> {
        self.keys_with_id_prefix("")
    }

    /// The keys whose id (the lower-case hex of their hash) starts with `prefix`.
    pub fn keys_with_id_prefix(
        &self,
        prefix: &str,
    ) -> Result<Vec<(KeyHash, KeyRecord)>, StoreError> {
        let prefix = prefix.to_ascii_lowercase();
        // Narrow the scan by the whole bytes the prefix names; filter the odd digit after.
        let whole = hex::decode(&prefix[..prefix.len() & !1]).unwrap_or_default();
        let mut scan = vec![KEY];
        scan.extend_from_slice(&whole);
        let mut out = Vec::new();
        for entry in self.db.scan_prefix(scan) {
            let (k, v) = entry?;
            let Ok(hash) = <[u8; 32]>::try_from(&k[1..]) else {
                continue;
            };
            if hex::encode(hash).starts_with(&prefix) {
                out.push((KeyHash(hash), KeyRecord::decode(&v)?));
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
                let registered = self.db.contains_key(super::domain_key(host))?
                    || (self.db.scan_prefix(super::domain_key(&format!("{host}:"))))
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
            batch.remove(outbox_key(due, host));
        }
        batch.insert(bridge_key(host), record.encode());
        batch.insert(outbox_key(now, host), Vec::new());
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
        for entry in self.db.scan_prefix([BRIDGE]) {
            let (_, v) = entry?;
            *counts.entry(BridgeRecord::decode(&v)?.phase).or_default() += 1;
        }
        Ok(counts)
    }

    /// A tiny write for the readiness check; the caller commits it to prove the disk takes
    /// writes.
    pub fn probe_write(&self, now: UnixTime) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.insert(meta_key(b"readyz"), now.to_be_bytes().to_vec());
        self.write(batch)
    }
}
