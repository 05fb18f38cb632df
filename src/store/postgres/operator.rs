//! What the operator's face (the admin API) reads and does: the inventory, the key list, key
//! lookup by id prefix, requeueing a domain, the bridge's phase counts, the readiness probe.

use super::bridge::{insert_bridge, lock_bridge, write_bridge};
use super::keys::count;
use super::rows::{KEY_COLUMNS, bridge_record, key_hash, key_record, phase_named};
use super::{PgStore, sql};
use crate::apikey::KeyHash;
use crate::store::{
    AuditKind, BridgePhase, BridgeRecord, Holder, InventoryRow, KeyRecord, RequeueOutcome,
    StoreError, UnixTime,
};
use std::collections::HashMap;
use std::net::IpAddr;

/// The bridge's name for a registered domain: its host, without a port.
fn host_of(domain: &str) -> String {
    match crate::domain::normalize(domain) {
        Ok(d) => d.host().to_owned(),
        Err(_) => domain.to_owned(),
    }
}

/// The smallest byte string greater than every string starting with `prefix`, if any.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl PgStore {
    /// Up to `limit` registered domains after `after` (exclusive; `None`: from the first), in
    /// lexicographic order, each with its bridge record and holders.
    pub async fn inventory_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<InventoryRow>, StoreError> {
        on_conn!(self, c, {
            let domains = sql::rows(
                c,
                "SELECT name, first_added_at FROM domains
                 WHERE $1::text IS NULL OR name > $1 ORDER BY name LIMIT $2",
                &[&after, &count(limit)],
            )
            .await?;
            let names: Vec<String> = domains.iter().map(|r| r.get(0)).collect();
            let hosts: Vec<String> = names.iter().map(|n| host_of(n)).collect();
            let mut holders: HashMap<String, Vec<Holder>> = HashMap::new();
            for r in sql::rows(
                c,
                "SELECT kd.domain, kd.key_hash, k.confirmed_at IS NOT NULL, k.revoked_at IS NOT NULL
                 FROM key_domains kd JOIN keys k ON k.hash = kd.key_hash
                 WHERE kd.domain = ANY($1) ORDER BY kd.domain, kd.key_hash",
                &[&names],
            )
            .await?
            {
                holders.entry(r.get(0)).or_default().push(Holder {
                    key_id: key_hash(&r, 1)?.id(),
                    confirmed: r.get(2),
                    revoked: r.get(3),
                });
            }
            let mut bridges: HashMap<String, BridgeRecord> = HashMap::new();
            for r in sql::rows(
                c,
                "SELECT domain, record FROM bridge WHERE domain = ANY($1)",
                &[&hosts],
            )
            .await?
            {
                bridges.insert(r.get(0), bridge_record(&r, 1)?);
            }
            Ok(domains
                .iter()
                .zip(hosts)
                .map(|(r, host)| {
                    let domain: String = r.get(0);
                    InventoryRow {
                        registered_at: r.get(1),
                        bridge: bridges.get(&host).cloned(),
                        holders: holders.remove(&domain).unwrap_or_default(),
                        domain,
                    }
                })
                .collect())
        })
    }

    /// Up to `limit` keys after `after` (exclusive; `None`: from the first), in the order of
    /// their hashes.
    pub async fn keys_after(
        &self,
        after: Option<&KeyHash>,
        limit: usize,
    ) -> Result<Vec<(KeyHash, KeyRecord)>, StoreError> {
        let after: &[u8] = after.map_or(&[], |h| h.0.as_slice());
        on_conn!(self, c, {
            let rows = sql::rows(
                c,
                &format!(
                    "SELECT hash, {KEY_COLUMNS} FROM keys WHERE hash > $1 ORDER BY hash LIMIT $2"
                ),
                &[&after, &count(limit)],
            )
            .await?;
            rows.iter()
                .map(|r| Ok((key_hash(r, 0)?, key_record(r, 1)?)))
                .collect()
        })
    }

    /// The keys whose id (the lower-case hex of their hash) starts with `prefix`.
    pub async fn keys_with_id_prefix(
        &self,
        prefix: &str,
    ) -> Result<Vec<(KeyHash, KeyRecord)>, StoreError> {
        let prefix = prefix.to_ascii_lowercase();
        // Narrow the scan to the whole bytes the prefix names; the odd digit is checked after.
        let even = prefix.len() & !1;
        let whole = if prefix.is_char_boundary(even) {
            hex::decode(&prefix[..even]).unwrap_or_default()
        } else {
            Vec::new()
        };
        let end = prefix_end(&whole);
        let rows = on_conn!(self, c, {
            sql::rows(
                c,
                &format!(
                    "SELECT hash, {KEY_COLUMNS} FROM keys
                         WHERE hash >= $1 AND ($2::bytea IS NULL OR hash < $2) ORDER BY hash"
                ),
                &[&whole, &end],
            )
            .await
        })?;
        let mut out = Vec::new();
        for r in &rows {
            let hash = key_hash(r, 0)?;
            if hex::encode(hash.0).starts_with(&prefix) {
                out.push((hash, key_record(r, 1)?));
            }
        }
        Ok(out)
    }

    /// Sends a domain's bridge record back to `queued`, due now, keeping what is known about
    /// it. `host` is the bridge's name for it (no port). A domain registered while the bridge
    /// was off gets its first record.
    pub async fn requeue_domain(
        &self,
        host: &str,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<RequeueOutcome, StoreError> {
        if !self.bridge_enabled() {
            return Ok(RequeueOutcome::BridgeOff);
        }
        let requeued = |mut record: BridgeRecord| {
            record.phase = BridgePhase::Queued;
            record.attempts = 0;
            record.next_attempt_at = Some(now);
            record
        };
        in_tx!(self, w, {
            match lock_bridge(w, host).await? {
                Some(record) => write_bridge(w, host, &requeued(record)).await?,
                None => {
                    // The host itself, or the host with a port (`host:8443`; ':' < ';').
                    let registered = sql::row(
                        &w.tx,
                        "SELECT EXISTS (SELECT 1 FROM domains
                             WHERE name = $1 OR (name > $1 || ':' AND name < $1 || ';'))",
                        &[&host],
                    )
                    .await?
                    .is_some_and(|r| r.get::<_, bool>(0));
                    if !registered {
                        return Ok(RequeueOutcome::UnknownDomain);
                    }
                    // A registration that inserted it meanwhile has committed by now (the
                    // insert waited for it): requeue that record instead.
                    if !insert_bridge(w, host, &BridgeRecord::queued(now, false)).await?
                        && let Some(record) = lock_bridge(w, host).await?
                    {
                        write_bridge(w, host, &requeued(record)).await?;
                    }
                }
            }
            let kind = AuditKind::DomainRequeued {
                domain: host.to_owned(),
            };
            w.audit(now, ip, KeyHash([0; 32]).id(), kind).await?;
            w.wake_bridge();
            Ok(RequeueOutcome::Requeued)
        })
    }

    /// How many bridge records are in each phase (for the metrics).
    pub async fn bridge_phase_counts(&self) -> Result<HashMap<BridgePhase, u64>, StoreError> {
        on_conn!(self, c, {
            let rows =
                sql::rows(c, "SELECT phase, count(*) FROM bridge GROUP BY phase", &[]).await?;
            let mut counts = HashMap::new();
            for r in &rows {
                let name: &str = r.get(0);
                let phase = phase_named(name).ok_or_else(|| {
                    StoreError::Pool(format!(
                        "the bridge table holds an unknown phase {name:?}; was it written by a \
                         newer certline?"
                    ))
                })?;
                counts.insert(phase, r.get::<_, i64>(1).max(0) as u64);
            }
            Ok(counts)
        })
    }

    /// A tiny write for the readiness check: `Ok` means the database committed it.
    pub async fn probe_write(&self, now: UnixTime) -> Result<(), StoreError> {
        in_tx!(self, w, {
            sql::execute(
                &w.tx,
                "INSERT INTO meta (name, value) VALUES ('readyz', $1)
                 ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                &[&now],
            )
            .await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn a_prefix_range_ends_after_every_string_it_starts() {
        assert_eq!(prefix_end(&[0x12, 0x34]), Some(vec![0x12, 0x35]));
        assert_eq!(prefix_end(&[0x12, 0xff]), Some(vec![0x13]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(&[]), None);
    }
}
